using System.Diagnostics;
using System.Runtime.InteropServices;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Scenarios;

/// <summary>
/// Scenario 5, resident memory against live bytes (Redis active defrag's test: fragmentation ratio below 1.1
/// afterwards): allocate a seeded mix of written blocks, free 3/4 at random, and report the process's resident
/// memory growth over the live bytes before compaction, and after <see cref="NativeHeap.Compact"/> +
/// <see cref="NativeHeap.ReleaseFreeMemory"/>. glibc and mimalloc run the same requests as reference rows (they
/// cannot compact; their "after" is malloc_trim(0) / mi_collect(true)).
/// </summary>
public static unsafe class ResidentMemoryScenario
{
    private sealed record Config(string Name, bool HugePages, int UnmovablePercent, bool Goal, bool Background = false);

    private sealed record Outcome(long Live, long RssBefore, long RssAfter, long CommittedAfter, long Released, double CompactMs, long HugeBefore,
                                  long HugeAfter, long Metadata, long Purged, long ManagedGrowth, int Corrupt);

    private sealed record Workload(string Name, string Description, Func<Random, int> Sizes, Config[] Configs);

    public static ScenarioReport Run(CompactionBenchOptions o)
    {
        long fill = o.Quick ? 64L << 20 : 128L << 20;
        long arena = 2 * fill;
        int reps = o.Quick ? 1 : 3;
        Workload[] workloads =
        [
            new("mixed sizes", "log-uniform 16 B-256 KiB", SizeMix.LogUniform(16, 256 * 1024),
            [
                new("NativeHeap, movable, huge pages (default)", true, 0, true),
                new("NativeHeap, movable, UseHugePages = false", false, 0, true),
                new("NativeHeap, movable, background compaction only (no call)", true, 0, true, Background: true),
                new("NativeHeap, 20% unmovable, huge pages", true, 20, false),
            ]),
            new("small blocks", "log-uniform 16 B-1 KiB (Mesh-like: page-granular trimming cannot help)", SizeMix.LogUniform(16, 1024),
            [
                new("NativeHeap, movable, huge pages (default)", true, 0, true),
                new("NativeHeap, movable, UseHugePages = false", false, 0, true),
                new("NativeHeap, movable, background compaction only (no call)", true, 0, true, Background: true),
            ]),
        ];

        var report = new ScenarioReport
        {
            Name = "rss",
            Title = "5. Resident memory vs live bytes",
            Setup = $"{Fmt.Mib(fill)} of written blocks (seeded) go into a {arena >> 20} MiB heap (75% movable zone); 3/4 of them are " +
                    "freed at random. RSS = growth of this process's resident memory (/proc/self/statm) since just before the heap was created, so the " +
                    "runtime's own memory is left out and the heap's metadata is counted. *Before* = after the frees; *after* = after `Compact()` + " +
                    $"`ReleaseFreeMemory()`. A warm-up run (JIT), then {reps} repetition(s) per row (seeds {o.Seed}..{o.Seed + reps - 1}), medians. " +
                    "glibc and mimalloc serve the same requests (same sizes, same order, same frees) as a reference: they cannot compact, and their " +
                    "*after* is malloc_trim(0) / mi_collect(true). Live = requested bytes (size-class rounding counts against every allocator).",
        };
        RunHeap(workloads[0].Configs[0], 32L << 20, 16L << 20, workloads[0].Sizes, o.Seed);   // warm-up: JIT the paths, not measured
        foreach (Workload w in workloads)
        {
            var table = new MarkdownTable("<Allocator (" + w.Name + ": " + w.Description + ")", "Live MiB", "RSS before MiB", "RSS/live before",
                                          "RSS after MiB", "RSS/live after", "Committed after MiB", "of which purged MiB", "Metadata MiB", "Released MiB", "Compact() ms",
                                          "AnonHugePages before / after MiB", "Corrupt");
            foreach (Config c in w.Configs)
            {
                var outcomes = new List<Outcome>();
                for (int rep = 0; rep < reps; rep++)
                {
                    Outcome r = RunHeap(c, arena, fill, w.Sizes, o.Seed + rep, o.Quick ? 5 : 15);
                    outcomes.Add(r);
                    report.CorruptBlocks += r.Corrupt;
                    Console.WriteLine($"  {w.Name}, {c.Name} rep {rep}: live {Fmt.Mib(r.Live)}, RSS {Fmt.Mib(r.RssBefore)} -> {Fmt.Mib(r.RssAfter)} " +
                                      $"(ratio {(double)r.RssBefore / r.Live:F2} -> {(double)r.RssAfter / r.Live:F2}), committed {Fmt.Mib(r.CommittedAfter)}, " +
                                      $"metadata {Fmt.Mib(r.Metadata)}, managed heap growth {Fmt.Mib(r.ManagedGrowth)}, compact {r.CompactMs:F1} ms, {r.Corrupt} corrupt");
                }
                double before = Stats.Median(outcomes.Select(r => (double)r.RssBefore / r.Live));
                double after = Stats.Median(outcomes.Select(r => (double)r.RssAfter / r.Live));
                table.Add(c.Name, MedianMib(outcomes, r => r.Live), MedianMib(outcomes, r => r.RssBefore), Fmt.F(before, 2),
                          MedianMib(outcomes, r => r.RssAfter), Fmt.F(after, 2), MedianMib(outcomes, r => r.CommittedAfter),
                          MedianMib(outcomes, r => r.Purged), MedianMib(outcomes, r => r.Metadata), MedianMib(outcomes, r => r.Released), Fmt.F(Stats.Median(outcomes.Select(r => r.CompactMs))),
                          $"{MedianMib(outcomes, r => r.HugeBefore)} / {MedianMib(outcomes, r => r.HugeAfter)}", Fmt.N(outcomes.Sum(r => r.Corrupt)));
                report.Summary.Add(new SummaryRow("5. Resident memory", $"RSS / live, {w.Name} ({c.Name.Replace("NativeHeap, ", "")})",
                                                  $"{Fmt.F(before, 2)} before", $"{Fmt.F(after, 2)} after", $"-{Fmt.Pct(100 * (1 - after / before))} RSS",
                                                  c.Goal ? (c.Background ? "<= 1.15 by itself" : "<= 1.10 after") : "(unmovable blocks cannot move: no goal)",
                                                  c.Goal ? after <= (c.Background ? 1.15 : 1.10) : null));
            }

            foreach ((string name, Peer? peer) in Peers())
            {
                if (peer is not Peer p)
                {
                    string note = $"{name} skipped: {Compaction.Bench.Peers.Skipped.GetValueOrDefault(name, "not available")}";
                    if (!report.Notes.Contains(note)) report.Notes.Add(note);
                    continue;
                }
                var rs = new List<(long live, long before, long after)>();
                for (int rep = 0; rep < reps; rep++) rs.Add(RunPeer(p, fill, w.Sizes, o.Seed + rep));
                double before = Stats.Median(rs.Select(r => (double)r.before / r.live)), after = Stats.Median(rs.Select(r => (double)r.after / r.live));
                Console.WriteLine($"  {w.Name}, {name}: RSS/live {before:F2} -> {after:F2}");
                table.Add($"{name} (reference; after = {p.TrimName})", Fmt.F(Stats.Median(rs.Select(r => (double)r.live)) / (1 << 20)),
                          Fmt.F(Stats.Median(rs.Select(r => (double)r.before)) / (1 << 20)), Fmt.F(before, 2),
                          Fmt.F(Stats.Median(rs.Select(r => (double)r.after)) / (1 << 20)), Fmt.F(after, 2), "-", "-", "-", "-", "-", "-", "-");
            }
            report.Tables.Add(table);
        }
        report.Notes.Add($"THP mode is `{RunInfo.TransparentHugePages() ?? "unknown"}`: with huge pages a committed 2 MiB pageblock becomes resident " +
                         "as a whole at its first touch (compaction's destinations at the top of the used range included), so RSS follows committed bytes, " +
                         "whose granularity is 2 MiB; the `UseHugePages = false` rows show the same heap with 4 KiB pages.");
        report.Notes.Add("The *background compaction only* rows make no call: `StartBackgroundCompaction()` after the frees, then wait until " +
                         "committed bytes have not changed for 1.5 s (at most 15 s, 5 s with --quick); *Compact() ms* is then the time until the last change, " +
                         "from the thread's first wake (500 ms after the start) on.");
        report.Notes.Add("*Released* is what `ReleaseFreeMemory()` returned: wholly free pageblocks decommitted, plus free runs of 4 or more pages " +
                         "inside pageblocks still in use purged (madvise DONTNEED; they stay committed, so *committed after* includes them).");
        report.Notes.Add("After compaction, NativeHeap's RSS is about its committed bytes, less the purged runs, plus its metadata: the page descriptors " +
                         "(32 B per 4 KiB page below the zones' frontiers: the part of the arena ever handed out) and the handle table (32 B per entry, sized by the peak number of blocks and " +
                         "never shrunk), which is why the small-block rows, with four times as many blocks at the peak as at the end, stay far above 1.");
        report.Notes.Add("Unmovable blocks never move and live in the normal zone, so its pageblocks stay as sparse as the frees left them: " +
                         "the 20% unmovable row is there to show that limit, not held to the goal.");
        return report;
    }

    private static string MedianMib(List<Outcome> rs, Func<Outcome, long> f) => Fmt.F(Stats.Median(rs.Select(r => (double)f(r))) / (1 << 20));

    private static long Settle() => ProcessMemory.SettledResidentBytes() ?? 0;

    private static Outcome RunHeap(Config c, long arena, long fill, Func<Random, int> sizes, int seed, int backgroundSeconds = 15)
    {
        // The list is sized and written up front, so that neither the managed heap nor its resident pages grow while
        // resident memory is measured.
        List<Block> blocks = HeapWorkload.PrefaultedList<Block>(HeapWorkload.CountFill(seed, fill, sizes, c.UnmovablePercent) + 16);
        var rng = new Random(seed);
        long rss0 = Settle(), managed0 = GC.GetGCMemoryInfo().TotalCommittedBytes;
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = arena, UseHugePages = c.HugePages });
        HeapWorkload.Fill(heap, rng, fill, sizes, c.UnmovablePercent, out _, into: blocks);
        HeapWorkload.FreeRandom(heap, blocks, rng, 3, 4);
        long live = heap.GetStatistics().LiveBytes;
        long rssBefore = (ProcessMemory.ResidentBytes() ?? 0) - rss0;
        long hugeBefore = ProcessMemory.RollupBytes("AnonHugePages") ?? 0;
        long purgedBefore = heap.GetStatistics().PurgedBytes;
        long t0 = Stopwatch.GetTimestamp(), t1, released = 0;
        if (c.Background)
        {
            // No call: the background thread alone. Settled = committed bytes unchanged for a second (or the limit).
            heap.StartBackgroundCompaction();
            long last = heap.GetStatistics().CommittedBytes, lastChange = t0;
            while (Stopwatch.GetElapsedTime(t0).TotalSeconds < backgroundSeconds && Stopwatch.GetElapsedTime(lastChange).TotalSeconds < 1.5)
            {
                Thread.Sleep(50);
                long now = heap.GetStatistics().CommittedBytes;
                if (now != last) { last = now; lastChange = Stopwatch.GetTimestamp(); }
            }
            t1 = lastChange;
            heap.StopBackgroundCompaction();
        }
        else
        {
            heap.Compact();
            t1 = Stopwatch.GetTimestamp();
            released = heap.ReleaseFreeMemory();
        }
        long rssAfter = (ProcessMemory.ResidentBytes() ?? 0) - rss0;
        long hugeAfter = ProcessMemory.RollupBytes("AnonHugePages") ?? 0;
        long managedGrowth = GC.GetGCMemoryInfo().TotalCommittedBytes - managed0;
        HeapStatistics stats = heap.GetStatistics();
        long purged = stats.PurgedBytes - purgedBefore;
        int corrupt = HeapWorkload.CountCorrupt(heap, blocks);
        HeapWorkload.FreeAll(heap, blocks);
        return new Outcome(live, rssBefore, rssAfter, stats.CommittedBytes, released, Stats.Us(t1 - t0) / 1000, hugeBefore, hugeAfter,
                           stats.MetadataBytes, purged, managedGrowth, corrupt);
    }

    // ------------------------------------------------------------------ reference peers

    private readonly struct Peer(string trimName, delegate*<nuint, void*> malloc, delegate*<void*, void> free, Action trim)
    {
        public string TrimName { get; } = trimName;
        public delegate*<nuint, void*> Malloc { get; } = malloc;
        public delegate*<void*, void> Free { get; } = free;
        public Action Trim { get; } = trim;
    }

    private static List<(string, Peer?)> Peers()
    {
        var peers = new List<(string, Peer?)>();
        Peer? glibc = null;
        if (ProcessMemory.TrimGlibc())
            glibc = new Peer("malloc_trim(0)", &GlibcMalloc, &GlibcFree, () => ProcessMemory.TrimGlibc());
        peers.Add((Compaction.Bench.Peers.Glibc, glibc));

        Peer? mimalloc = null;
        if (Compaction.Bench.Peers.MimallocPeer is NativePeer mi && NativeLibrary.TryGetExport(mi.Module, "mi_collect", out nint collect))
        {
            s_mimalloc = mi;
            mimalloc = new Peer("mi_collect(true)", &MimallocMalloc, &MimallocFree, () => ((delegate* unmanaged<byte, void>)collect)(1));
        }
        peers.Add((Compaction.Bench.Peers.Mimalloc, mimalloc));
        return peers;
    }

    private static NativePeer? s_mimalloc;
    private static void* GlibcMalloc(nuint n) => NativeMemory.Alloc(n);
    private static void GlibcFree(void* p) => NativeMemory.Free(p);
    private static void* MimallocMalloc(nuint n) => s_mimalloc!.Malloc(n);
    private static void MimallocFree(void* p) => s_mimalloc!.Free(p);

    /// <summary>The same requests (sizes, order, frees) through a peer's malloc and free.</summary>
    private static (long live, long before, long after) RunPeer(Peer p, long fill, Func<Random, int> sizes, int seed)
    {
        List<(nint ptr, int size)> blocks = HeapWorkload.PrefaultedList<(nint, int)>(HeapWorkload.CountFill(seed, fill, sizes, 0) + 16);
        var rng = new Random(seed);
        long rss0 = Settle();
        long live = 0;
        while (live < fill)
        {
            int n = sizes(rng);
            _ = rng.Next(1, 256);    // the pattern draw of HeapWorkload.Fill, so both see the same sizes
            void* ptr = p.Malloc((nuint)n);
            new Span<byte>(ptr, n).Fill(0x5A);
            blocks.Add(((nint)ptr, n));
            live += n;
        }
        for (int i = blocks.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (blocks[i], blocks[j]) = (blocks[j], blocks[i]);
        }
        int freed = blocks.Count * 3 / 4;
        for (int i = 0; i < freed; i++)
        {
            p.Free((void*)blocks[i].ptr);
            live -= blocks[i].size;
        }
        long before = (ProcessMemory.ResidentBytes() ?? 0) - rss0;
        p.Trim();
        long after = (ProcessMemory.ResidentBytes() ?? 0) - rss0;
        for (int i = freed; i < blocks.Count; i++) p.Free((void*)blocks[i].ptr);
        p.Trim();
        return (live, before, after);
    }
}
