using System.Diagnostics;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Scenarios;

/// <summary>
/// Scenario 2, compaction throughput: bytes moved per second by an explicit <see cref="NativeHeap.Compact"/> of a
/// fragmented heap (3/4 of the blocks freed at random), as a share of the memcpy bandwidth measured in the same run
/// (<see cref="Buffer.MemoryCopy"/> of the same number of bytes between two warmed blocks of a heap with the same
/// options, so that both copies run on the same kind of pages). One heap per mix, reused across repetitions
/// (free-all between them), so that page faults are paid once, in the warm-up repetition.
/// </summary>
public static unsafe class CompactionThroughputScenario
{
    private sealed record Mix(string Name, string Description, Func<Random, int> Sizes);

    private sealed record Outcome(long BytesMoved, double CompactMs, long PagesMigrated, long PagesCompacted, int Survivors, int Corrupt, long Barriers);

    public static ScenarioReport Run(CompactionBenchOptions o)
    {
        long arena = o.Quick ? 64L << 20 : 256L << 20;
        int reps = o.Quick ? 2 : 5;
        const int fillPercent = 75;
        Func<Random, int> small = SizeMix.LogUniform(16, 1024);
        Func<Random, int> runs = SizeMix.Uniform(48 * 1024, 80 * 1024);
        double smallMean = (1024 - 16) / Math.Log(1024.0 / 16), runMean = 64 * 1024;
        Mix[] mixes =
        [
            new("64 KiB runs", "48-80 KiB blocks (page runs)", runs),
            new("small slabs", "16 B-1 KiB blocks, log-uniform (slab slots)", small),
            new("mixed", "both, half the bytes each", SizeMix.Mixed(SizeMix.HalfTheBytes(smallMean, runMean), small, runs)),
        ];

        var options = new HeapOptions { ArenaBytes = arena, MovableZonePercent = 100 };
        var report = new ScenarioReport
        {
            Name = "throughput",
            Title = "2. Compaction throughput vs memcpy",
            Setup = $"Per mix, one {arena >> 20} MiB heap (all movable, 2 MiB huge-page pageblocks) is filled to {fillPercent}% with written blocks, " +
                    "3/4 of them are freed at random, and `Compact()` is timed (slab consolidation, then both scanners over the zone). " +
                    $"A warm-up repetition, then {reps} measured ones (seeds {o.Seed}..{o.Seed + reps - 1}); the heap is reused, so its pages are resident. " +
                    "memcpy = `Buffer.MemoryCopy` of the median bytes moved, in one call, between two faulted-in blocks of a heap with the same options; " +
                    "*cold*: each copy after writing an unrelated 128 MiB (the compactor's data is cold too: written by the fill, long before), " +
                    $"*hot*: right after a copy of the same bytes (medians of {MemcpyRuns} each, the two kinds interleaved; the ratio is taken against cold). Survivors are verified byte for byte after each compaction (not timed).",
        };
        var table = new MarkdownTable("<Mix", "Live after free (MiB)", "Moved (MiB)", "Compact() ms", "Compaction MB/s", "memcpy cold MB/s", "memcpy hot MB/s",
                                      "Compaction / cold memcpy", "/ hot memcpy", "pages migrated", "slab pages compacted", "barriers per MiB moved", "Corrupt");
        foreach (Mix mix in mixes)
        {
            var outcomes = new List<Outcome>();
            long liveAfterFree = 0;
            using (var heap = new NativeHeap(options))
            {
                var blocks = new List<Block>();
                for (int rep = -1; rep < reps; rep++)
                {
                    var rng = new Random(o.Seed + Math.Max(rep, 0));
                    HeapWorkload.Fill(heap, rng, arena * fillPercent / 100, mix.Sizes, 0, out _, into: blocks);
                    HeapWorkload.FreeRandom(heap, blocks, rng, 3, 4);
                    liveAfterFree = heap.GetStatistics().LiveBytes;
                    long t0 = Stopwatch.GetTimestamp();
                    CompactionStatistics c = heap.Compact();
                    long t1 = Stopwatch.GetTimestamp();
                    int corrupt = HeapWorkload.CountCorrupt(heap, blocks);
                    var r = new Outcome(c.BytesMoved, Stats.Us(t1 - t0) / 1000, c.PgmigrateSuccess, c.PagesCompacted, blocks.Count, corrupt, c.Barriers);
                    report.CorruptBlocks += corrupt;
                    if (rep >= 0) outcomes.Add(r);
                    Console.WriteLine($"  {mix.Name} {(rep < 0 ? "warm-up" : $"rep {rep}")}: moved {Fmt.Mib(r.BytesMoved)} in {r.CompactMs:F1} ms " +
                                      $"= {r.BytesMoved / (r.CompactMs / 1000) / 1e6:F0} MB/s; {corrupt} corrupt of {r.Survivors:N0}; " +
                                      $"{r.Barriers} barriers = {r.Barriers / Math.Max(r.BytesMoved / 1048576.0, 1e-9):F1} per MiB moved");
                    HeapWorkload.FreeAll(heap, blocks);
                }
            }
            long moved = (long)Stats.Median(outcomes.Select(r => (double)r.BytesMoved));
            double compactMs = Stats.Median(outcomes.Select(r => r.CompactMs));
            double rate = Stats.Median(outcomes.Select(r => r.BytesMoved / (r.CompactMs / 1000) / 1e6));
            (double hot, double memcpy) = MemcpyMegabytesPerSecond(options, Math.Max(moved, 1 << 20));
            Console.WriteLine($"  {mix.Name}: compaction {rate:F0} MB/s, memcpy {memcpy:F0} MB/s cold, {hot:F0} MB/s hot -> {rate / memcpy:P0} of cold");
            table.Add(mix.Name + " (" + mix.Description + ")", Fmt.F(liveAfterFree / (1024.0 * 1024)), Fmt.F(moved / (1024.0 * 1024)), Fmt.F(compactMs),
                      Fmt.F(rate, 0), Fmt.F(memcpy, 0), Fmt.F(hot, 0), Fmt.Pct(100 * rate / memcpy), Fmt.Pct(100 * rate / hot),
                      Fmt.N((long)Stats.Median(outcomes.Select(r => (double)r.PagesMigrated))),
                      Fmt.N((long)Stats.Median(outcomes.Select(r => (double)r.PagesCompacted))),
                      Fmt.F(Stats.Median(outcomes.Select(r => r.Barriers / Math.Max(r.BytesMoved / 1048576.0, 1e-9))), 1),
                      Fmt.N(outcomes.Sum(r => r.Corrupt)));
            report.Summary.Add(new SummaryRow("2. Compaction throughput", $"{mix.Name}: moved bytes/s, share of memcpy",
                                              $"memcpy {Fmt.F(memcpy, 0)} MB/s (cold)", $"{Fmt.F(rate, 0)} MB/s", Fmt.Pct(100 * rate / memcpy),
                                              ">= 70% of memcpy", rate >= 0.7 * memcpy));
        }
        report.Tables.Add(table);
        report.Notes.Add("Compaction MB/s is the median over repetitions of bytes moved / `Compact()` wall time (scanning, locking, " +
                         "freezing, the process-wide barrier per unit of work and the copies all count); MB = 10^6 bytes. Barriers per MiB moved: " +
                         "the compactor's process-wide barriers (`CompactionStatistics.Barriers`) over the MiB it moved, median over repetitions.");
        return report;
    }

    /// <summary>Bytes written between two cold copies to push the previous copy's lines out of the caches (far more
    /// than any last-level cache of these machines).</summary>
    private const long EvictionBytes = 128L << 20;

    /// <summary>Timed copies of each kind (after two warm-up copies).</summary>
    private const int MemcpyRuns = 15;

    /// <summary>
    /// Median bandwidth of <see cref="Buffer.MemoryCopy"/> of <paramref name="bytes"/> between two blocks of a heap with
    /// <paramref name="like"/>'s page settings, both faulted in first. <c>Hot</c>: the same copy repeated (what stays in
    /// the caches helps it); <c>Cold</c>: each copy after writing an unrelated 128 MiB, as the compactor's data is when
    /// it moves it (written long before, by the fill).
    /// </summary>
    private static (double Hot, double Cold) MemcpyMegabytesPerSecond(HeapOptions like, long bytes)
    {
        long pageblock = (long)like.PageSize * like.PageblockPages;
        long rounded = (bytes + pageblock - 1) / pageblock * pageblock;
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 2 * rounded + EvictionBytes + 8 * pageblock, MovableZonePercent = 100, UseHugePages = like.UseHugePages,
            PageSize = like.PageSize, PageblockPages = like.PageblockPages,
        });
        BlockHandle a = heap.Allocate(bytes), b = heap.Allocate(bytes), e = heap.Allocate(EvictionBytes);
        var hot = new List<double>();
        var cold = new List<double>();
        using (PinScope src = heap.Pin(a))
        using (PinScope dst = heap.Pin(b))
        using (PinScope evict = heap.Pin(e))
        {
            src.Span.Fill(0x5A);
            dst.Span.Clear();
            for (int i = 0; i < 2 + 2 * MemcpyRuns; i++)
            {
                bool isCold = i % 2 == 1;
                if (isCold) evict.Span.Fill((byte)i);
                long t0 = Stopwatch.GetTimestamp();
                Buffer.MemoryCopy(src.Pointer, dst.Pointer, bytes, bytes);
                long t1 = Stopwatch.GetTimestamp();
                if (i >= 2) (isCold ? cold : hot).Add(bytes / (Stats.Us(t1 - t0) / 1e6) / 1e6);
            }
        }
        heap.Free(a);
        heap.Free(b);
        heap.Free(e);
        return (Stats.Median(hot), Stats.Median(cold));
    }
}
