using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Scenarios;

/// <summary>
/// The <c>demo</c> scenario: fragment a heap the way a long-running service does and show what is left.
/// Phases (each a method, run in order by <see cref="Run"/>, each timed):
/// <list type="number">
/// <item><see cref="Fill"/>: a seeded mix of movable and unmovable blocks, 16 B-256 KiB (log-uniform), until the
/// live bytes reach <see cref="DemoOptions.FillPercent"/> of the arena.</item>
/// <item><see cref="WritePattern"/>: every block gets its id and a per-block byte.</item>
/// <item><see cref="FreeRandomHalf"/>: a seeded random half of the blocks is freed.</item>
/// <item><see cref="VerifySurvivors"/>: every survivor still holds its pattern (and its size).</item>
/// <item><see cref="PrintStatistics"/>: the heap's statistics, buddy and page-type info, committed vs live.</item>
/// <item><see cref="ProbePageblockAllocations"/>: how many pageblock-sized (2 MiB) blocks can still be allocated.</item>
/// <item><see cref="Compact"/>: <see cref="NativeHeap.Compact"/>, with its counters; then the survivors are verified,
/// the statistics printed and the pageblock-sized allocations probed again.</item>
/// <item><see cref="ReleaseFreeMemory"/>: wholly free pageblocks go back to the OS.</item>
/// </list>
/// Every figure is labelled with the moment it was taken, and the ratios are the same two everywhere: committed / live
/// and resident / live (resident = committed less the free memory purged since, what <c>nativeheap.waste.ratio</c>
/// reports). The pageblock probe allocates and frees pageblocks, which commits memory: its effect is printed, and the
/// summary has a column before it and one after it. Output files (the arena pictures and the kernel's reports) go to
/// out/demo of the source tree unless <c>--out DIR</c> names another folder.
/// </summary>
public static class DemoScenario
{
    public static int Run(string[] args)
    {
        if (!DemoOptions.TryParse(args, out DemoOptions? options, out string? error))
        {
            Console.Error.WriteLine($"demo: {error}");
            Console.Error.WriteLine(DemoOptions.Usage);
            return 2;
        }
        string outDir = options.OutDirectory ?? Path.Combine(Paths.BenchDirectory(), "..", "out", "demo");
        Directory.CreateDirectory(outDir);
        outDir = Path.GetFullPath(outDir);
        Console.WriteLine($"demo: seed {options.Seed} (repeat with --seed {options.Seed}); arena {options.ArenaBytes >> 20} MiB; " +
                          $"fill to {options.FillPercent}% live; blocks {options.MinSize} B-{options.MaxSize >> 10} KiB, {options.UnmovablePercent}% unmovable; " +
                          "direct compaction off (only the explicit Compact() phase moves blocks)");
        var total = Stopwatch.StartNew();
        using var run = new DemoRun(options);

        Phase("fill", () => Fill(run));
        Phase("write pattern", () => WritePattern(run));
        Phase("free random half", () => FreeRandomHalf(run));
        long corrupt = Phase("verify survivors", () => VerifySurvivors(run));
        HeapStatistics freedHalf = Phase("statistics", () => PrintStatistics(run, "after freeing half"));
        ArenaMap before = run.Heap.GetArenaMap("after freeing half, before Compact()");
        (int Movable, int Unmovable) probeBefore = Phase("probe pageblock allocations", () => ProbePageblockAllocations(run));
        // The probe allocated and freed pageblocks: what it committed stays committed until the release below.
        HeapStatistics beforeCompact = run.Heap.GetStatistics();
        PrintProbeEffect(freedHalf, beforeCompact);

        int firstMovable = before.Pageblocks.FirstOrDefault(p => p.Zone == "Movable")?.Index ?? 0;
        string zoom = Path.Combine(outDir, "arena-demo-pages.svg");
        File.WriteAllText(zoom, ArenaMap.PageSvg(run.Heap.GetPageMap(firstMovable, 4), run.Heap.Options.PageblockPages / 4,
                                                 "the movable zone's first 4 pageblocks, page by page, before Compact()"));
        string reports = Path.Combine(outDir, "arena-demo-reports.txt");
        File.WriteAllText(reports, KernelReports(freedHalf, "after freeing half, before the probe and Compact()"));
        CompactionStatistics moved = Phase("compact", () => Compact(run));
        corrupt += Phase("verify survivors after compaction", () => VerifySurvivors(run));
        HeapStatistics compacted = Phase("statistics", () => PrintStatistics(run, "after Compact()"));
        (int Movable, int Unmovable) probeAfter = Phase("probe pageblock allocations after compaction", () => ProbePageblockAllocations(run));
        HeapStatistics probedAgain = run.Heap.GetStatistics();
        PrintProbeEffect(compacted, probedAgain);
        Phase("release free memory", () => ReleaseFreeMemory(run));
        HeapStatistics released = run.Heap.GetStatistics();
        File.AppendAllText(reports, "\n" + KernelReports(released, "after Compact() and ReleaseFreeMemory()"));
        string picture = Path.Combine(outDir, "arena-demo.svg");
        File.WriteAllText(picture, ArenaMap.Svg(before, run.Heap.GetArenaMap("after Compact() and ReleaseFreeMemory()")));
        PrintSummary(freedHalf, beforeCompact, compacted, released, probeBefore, probeAfter, moved);
        Console.WriteLine($"  picture of the arena before and after: {picture}; page by page: {zoom}");
        Console.WriteLine($"  the kernel's reports (buddyinfo, pagetypeinfo, extfrag_index, unusable_index) before and after: {reports}");
        if (!options.Verbose) Console.WriteLine("  every size class and counter: add --verbose");

        Phase("free all", () => FreeAll(run));
        Console.WriteLine($"demo: {(corrupt == 0 ? "OK" : $"FAILED: {corrupt} corrupt block(s)")} in {total.Elapsed.TotalSeconds:F2} s (seed {options.Seed})");
        return corrupt == 0 ? 0 : 1;
    }

    // ------------------------------------------------------------------ phases

    /// <summary>Allocates blocks until the live bytes reach the target, or until allocations keep failing.</summary>
    public static void Fill(DemoRun run)
    {
        DemoOptions o = run.Options;
        long target = o.ArenaBytes * o.FillPercent / 100;
        double logMin = Math.Log(o.MinSize), logMax = Math.Log(o.MaxSize);
        long live = 0;
        int failedMovable = 0, failedUnmovable = 0, failuresInARow = 0;
        while (live < target && failuresInARow < 64)
        {
            int size = (int)Math.Min(o.MaxSize, Math.Exp(logMin + run.Rng.NextDouble() * (logMax - logMin)));
            BlockKind kind = run.Rng.Next(100) < o.UnmovablePercent ? BlockKind.Unmovable : BlockKind.Movable;
            if (run.Heap.TryAllocate(size, kind, out BlockHandle h))
            {
                run.Blocks.Add(new DemoBlock(h, kind, size, run.NextId++));
                live += size;
                failuresInARow = 0;
            }
            else
            {
                if (kind == BlockKind.Movable) failedMovable++; else failedUnmovable++;
                failuresInARow++;
            }
        }
        int unmovable = run.Blocks.Count(b => b.Kind == BlockKind.Unmovable);
        Console.WriteLine($"  {run.Blocks.Count:N0} blocks ({run.Blocks.Count - unmovable:N0} movable, {unmovable:N0} unmovable), " +
                          $"{live:N0} B live = {100.0 * live / o.ArenaBytes:F1}% of the arena; failed allocations: {failedMovable} movable, {failedUnmovable} unmovable");
    }

    /// <summary>Writes each block's pattern: movable blocks through a pin, unmovable ones through their stable pointer.</summary>
    public static void WritePattern(DemoRun run)
    {
        long bytes = 0;
        foreach (DemoBlock b in run.Blocks)
        {
            WithBytes(run.Heap, b, span => DemoBlock.Write(span, b.Id));
            bytes += b.Size;
        }
        Console.WriteLine($"  wrote {bytes:N0} B");
    }

    /// <summary>Frees a seeded random half of the blocks; the rest stay in <see cref="DemoRun.Blocks"/>.</summary>
    public static void FreeRandomHalf(DemoRun run)
    {
        List<DemoBlock> blocks = run.Blocks;
        for (int i = blocks.Count - 1; i > 0; i--)
        {
            int j = run.Rng.Next(i + 1);
            (blocks[i], blocks[j]) = (blocks[j], blocks[i]);
        }
        int half = blocks.Count / 2;
        long bytes = 0;
        for (int i = 0; i < half; i++)
        {
            run.Heap.Free(blocks[i].Handle);
            bytes += blocks[i].Size;
        }
        blocks.RemoveRange(0, half);
        Console.WriteLine($"  freed {half:N0} blocks, {bytes:N0} B; {blocks.Count:N0} survive");
    }

    /// <summary>Checks every survivor's size and pattern. Returns the number of corrupt blocks (and prints the first few).</summary>
    public static long VerifySurvivors(DemoRun run)
    {
        long corrupt = 0;
        foreach (DemoBlock b in run.Blocks)
        {
            long size = run.Heap.GetSize(b.Handle);
            bool ok = size == b.Size;
            if (ok) WithBytes(run.Heap, b, span => ok = DemoBlock.Check(span, b.Id));
            if (ok) continue;
            if (++corrupt <= 5) Console.WriteLine($"  CORRUPT block {b.Id} ({b.Kind}, {b.Size} B, heap says {size} B)");
        }
        Console.WriteLine($"  {run.Blocks.Count:N0} survivors checked, {corrupt} corrupt");
        return corrupt;
    }

    /// <summary>Prints the statistics snapshot, buddy and page-type info, and committed vs live bytes.</summary>
    public static HeapStatistics PrintStatistics(DemoRun run, string when)
    {
        HeapStatistics s = run.Heap.GetStatistics();
        if (run.Options.Verbose)
        {
            Console.WriteLine($"---- heap statistics ({when}) ----");
            Console.Write(s.ToString());
            Console.WriteLine("---- buddyinfo (free blocks per order) ----");
            Console.Write(s.BuddyInfo());
            Console.WriteLine("---- pagetypeinfo ----");
            Console.Write(s.PageTypeInfo());
        }
        else
        {
            Console.WriteLine($"  fragmentation score {s.FragmentationScore}%; /proc/buddyinfo of the arena:");
            foreach (string line in HeapReports.BuddyInfo(s).TrimEnd('\n').Split('\n')) Console.WriteLine("    " + line);
        }
        long freePages = s.Zones.Sum(z => z.FreePages);
        Console.WriteLine($"  {when}: committed {Mib(s.CommittedBytes)}, resident {Mib(Resident(s))}, live {Mib(s.LiveBytes)}: " +
                          $"committed / live {CommittedRatio(s)}, resident / live {ResidentRatio(s)}; free pages {freePages:N0} ({Mib(freePages * s.PageSize)})");
        if (ProcessMemory.Summary() is string rss) Console.WriteLine($"process: {rss}");
        return s;
    }

    /// <summary>
    /// Allocates pageblock-sized blocks (2 MiB by default), movable then unmovable, until one fails; reports how many
    /// succeeded against how many the free pages could hold if they were contiguous; frees them again.
    /// </summary>
    public static (int Movable, int Unmovable) ProbePageblockAllocations(DemoRun run)
    {
        HeapStatistics before = run.Heap.GetStatistics();
        long pageblockBytes = (long)before.PageSize * before.PageblockPages;
        long ideal = before.Zones.Sum(z => z.FreePages) / before.PageblockPages;
        int movable = ProbeKind(run.Heap, pageblockBytes, BlockKind.Movable);
        int unmovable = ProbeKind(run.Heap, pageblockBytes, BlockKind.Unmovable);
        Console.WriteLine($"  pageblock-sized ({pageblockBytes >> 20} MiB) allocations that succeed: {movable} movable, {unmovable} unmovable " +
                          $"(each probed alone); the free pages would hold {ideal} if contiguous");
        return (movable, unmovable);
    }

    /// <summary>Compacts the whole movable zone (<see cref="NativeHeap.Compact"/>) and prints the run's counters.</summary>
    public static CompactionStatistics Compact(DemoRun run)
    {
        var sw = Stopwatch.StartNew();
        CompactionStatistics c = run.Heap.Compact();
        sw.Stop();
        Console.WriteLine($"  Compact() took {sw.Elapsed.TotalMilliseconds:F1} ms: moved {c.BytesMoved:N0} B ({Mib(c.BytesMoved)}) = " +
                          $"{(sw.Elapsed.TotalSeconds > 0 ? c.BytesMoved / sw.Elapsed.TotalSeconds / 1e6 : 0):F0} MB/s");
        Console.WriteLine(run.Options.Verbose ? "---- compaction counters (this run) ----" : "---- compaction counters that moved (this run) ----");
        foreach ((string name, long value) in Counters(c))
            if (run.Options.Verbose || value != 0) Console.WriteLine($"  {name,-30} {value,14:N0}");
        // 0/0 is no efficiency at all: an explicit Compact() is not a stall, so compact_stall is 0 here.
        Console.WriteLine($"  {"compaction efficiency",-30} {Percent(c.CompactSuccess, c.CompactStall),14}  (compact_success / compact_stall)");
        Console.WriteLine($"  {"scan efficiency",-30} {Percent(c.CompactMigrateScanned, c.CompactFreeScanned),14}  (migrate scanned / free scanned)");
        return c;
    }

    /// <summary>Gives free memory back to the OS (<see cref="NativeHeap.ReleaseFreeMemory"/>: wholly free pageblocks decommitted,
    /// free runs inside used pageblocks purged) and prints what it gave back.</summary>
    public static long ReleaseFreeMemory(DemoRun run)
    {
        HeapStatistics b = run.Heap.GetStatistics();
        long released = run.Heap.ReleaseFreeMemory();
        HeapStatistics s = run.Heap.GetStatistics();
        long purged = s.PurgedBytes - b.PurgedBytes;
        Console.WriteLine($"  ReleaseFreeMemory returned {released:N0} B ({Mib(released)}): {Mib(s.DecommittedBytes - b.DecommittedBytes)} of wholly free " +
                          $"pageblocks decommitted, {Mib(purged)} of free runs purged inside pageblocks in use");
        Console.WriteLine($"  before the release: committed {Mib(b.CommittedBytes)}, resident {Mib(Resident(b))}; after it: committed {Mib(s.CommittedBytes)}, " +
                          $"resident {Mib(Resident(s))}, live {Mib(s.LiveBytes)}: committed / live {CommittedRatio(s)}, resident / live {ResidentRatio(s)}");
        if (ProcessMemory.Summary() is string rss) Console.WriteLine($"process: {rss}");
        return released;
    }

    /// <summary>What the probe did to the figures: it allocated pageblocks and freed them, and the memory it committed
    /// stays committed (free, not purged) until a release.</summary>
    private static void PrintProbeEffect(HeapStatistics before, HeapStatistics after)
    {
        long committed = after.CommittedBytes - before.CommittedBytes;
        Console.WriteLine(committed == 0
            ? "  the probe committed nothing (it found its pageblocks in committed memory)"
            : $"  the probe committed {Mib(committed)} (pageblocks it allocated and freed stay committed until ReleaseFreeMemory): " +
              $"committed / live {CommittedRatio(before)} -> {CommittedRatio(after)}, resident / live {ResidentRatio(before)} -> {ResidentRatio(after)}");
    }

    /// <summary>The headline figures at a glance, each column a moment of the run.</summary>
    private static void PrintSummary(HeapStatistics freedHalf, HeapStatistics probed, HeapStatistics compacted, HeapStatistics released,
                                     (int Movable, int Unmovable) probeBefore, (int Movable, int Unmovable) probeAfter, CompactionStatistics moved)
    {
        HeapStatistics[] at = [freedHalf, probed, compacted, released];
        void Row(string name, Func<HeapStatistics, string> value) =>
            Console.WriteLine($"  {name,-34}" + string.Concat(at.Select(s => $" {value(s),18}")));
        Console.WriteLine();
        Console.WriteLine("==== summary (each column a moment of the run) ====");
        Console.WriteLine($"  {"",-34} {"half freed",18} {"after the probe",18} {"after Compact()",18} {"after release",18}");
        Row("committed", s => Mib(s.CommittedBytes));
        Row("resident (committed - purged)", s => Mib(Resident(s)));
        Row("live", s => Mib(s.LiveBytes));
        Row("committed / live", CommittedRatio);
        Row("resident / live", ResidentRatio);
        Row("fragmentation score (extfrag, %)", s => s.FragmentationScore.ToString(CultureInfo.InvariantCulture));
        Console.WriteLine($"  2 MiB allocations that succeed (the probes): {probeBefore.Movable} movable / {probeBefore.Unmovable} unmovable with half freed; " +
                          $"{probeAfter.Movable} / {probeAfter.Unmovable} after Compact()");
        Console.WriteLine($"  Compact() moved {Mib(moved.BytesMoved)} ({moved.PgmigrateSuccess:N0} pages, {moved.PagesCompacted:N0} slab pages compacted); " +
                          $"{moved.PinnedPagesSkipped:N0} pinned pages skipped");
    }

    private static long Resident(HeapStatistics s) => s.CommittedBytes - s.PurgedFreeBytes;
    private static string CommittedRatio(HeapStatistics s) => Ratio(s.CommittedBytes, s.LiveBytes);
    private static string ResidentRatio(HeapStatistics s) => Ratio(Resident(s), s.LiveBytes);
    private static string Ratio(long a, long b) => b == 0 ? "n/a" : ((double)a / b).ToString("F2", CultureInfo.InvariantCulture);
    private static string Percent(long a, long b) => b == 0 ? "n/a" : (a * 100.0 / b).ToString("F1", CultureInfo.InvariantCulture) + "%";

    /// <summary>The four kernel reports of one snapshot, under a heading.</summary>
    private static string KernelReports(HeapStatistics s, string when) =>
        $"==== {when} ====\n-- buddyinfo\n{HeapReports.BuddyInfo(s)}-- pagetypeinfo\n{HeapReports.PagetypeInfo(s)}" +
        $"-- extfrag_index\n{HeapReports.ExtfragIndex(s)}-- unusable_index\n{HeapReports.UnusableIndex(s)}";

    /// <summary>The counters by their kernel names, in /proc/vmstat order.</summary>
    private static IEnumerable<(string, long)> Counters(CompactionStatistics c) =>
    [
        ("compact_stall", c.CompactStall), ("compact_fail", c.CompactFail), ("compact_success", c.CompactSuccess),
        ("compact_migrate_scanned", c.CompactMigrateScanned), ("compact_free_scanned", c.CompactFreeScanned),
        ("compact_isolated", c.CompactIsolated), ("pgmigrate_success", c.PgmigrateSuccess), ("pgmigrate_fail", c.PgmigrateFail),
        ("compact_daemon_wake", c.CompactDaemonWake), ("compact_daemon_migrate_scanned", c.CompactDaemonMigrateScanned),
        ("compact_daemon_free_scanned", c.CompactDaemonFreeScanned), ("pages_compacted (slabs)", c.PagesCompacted),
        ("lock_acquisitions", c.LockAcquisitions), ("pinned_pages_skipped", c.PinnedPagesSkipped),
        ("cache_held_failures", c.CacheHeldFailures), ("bytes_moved", c.BytesMoved), ("bytes_decommitted", c.BytesDecommitted),
        ("compact_deferred", c.CompactDeferred), ("skip_bits_set", c.SkipBitsSet), ("captured", c.Captured),
        ("contended_runs", c.ContendedRuns),
    ];

    /// <summary>Frees every survivor (the heap is then empty again).</summary>
    public static void FreeAll(DemoRun run)
    {
        foreach (DemoBlock b in run.Blocks) run.Heap.Free(b.Handle);
        run.Blocks.Clear();
        HeapStatistics s = run.Heap.GetStatistics();
        Console.WriteLine($"  live {s.LiveBytes:N0} B in {s.LiveBlocks} blocks; committed {Mib(s.CommittedBytes)}");
    }

    // ------------------------------------------------------------------ helpers

    private static int ProbeKind(NativeHeap heap, long size, BlockKind kind)
    {
        var got = new List<BlockHandle>();
        while (heap.TryAllocate(size, kind, out BlockHandle h)) got.Add(h);
        foreach (BlockHandle h in got) heap.Free(h);
        return got.Count;
    }

    private delegate void SpanAction(Span<byte> span);

    /// <summary>Runs <paramref name="action"/> on the block's bytes: pinned when movable, by stable pointer when not.</summary>
    private static unsafe void WithBytes(NativeHeap heap, DemoBlock b, SpanAction action)
    {
        if (b.Kind == BlockKind.Movable)
        {
            using PinScope pin = heap.Pin(b.Handle);
            action(pin.Span);
        }
        else
        {
            action(new Span<byte>((void*)heap.GetStablePointer(b.Handle), b.Size));
        }
    }

    private static void Phase(string name, Action phase) => Phase(name, () => { phase(); return 0; });

    private static T Phase<T>(string name, Func<T> phase)
    {
        Console.WriteLine($"[{name}]");
        var sw = Stopwatch.StartNew();
        // A phase that takes more than a second says so every second, so a slow machine does not look hung.
        using var progress = new Timer(_ => Console.WriteLine($"[{name}] still running, {sw.Elapsed.TotalSeconds:F0} s"), null, 1000, 1000);
        T result = phase();
        progress.Change(Timeout.Infinite, Timeout.Infinite);
        Console.WriteLine($"[{name}] {sw.Elapsed.TotalMilliseconds:F1} ms");
        return result;
    }

    private static string Mib(long bytes) => $"{bytes / (1024.0 * 1024):F1} MiB";
}

/// <summary>Settings of the demo; <c>--seed</c>, <c>--arena-mib</c>, <c>--fill-percent</c>, <c>--unmovable-percent</c>, <c>--out</c>.</summary>
public sealed class DemoOptions
{
    public const string Usage = "usage: demo [--seed N] [--arena-mib N (default 256)] [--fill-percent P (default 80)] [--unmovable-percent P (default 20)] [--out DIR (default out/demo)] [--verbose]";

    /// <summary>Where the pictures and reports go; null: out/demo of the source tree (ignored by git).</summary>
    public string? OutDirectory { get; set; }

    /// <summary>Print the full statistics (every size class of both kinds, page-type info) and every counter.</summary>
    public bool Verbose { get; set; }

    /// <summary>Seed of every random choice; random (and printed) unless given.</summary>
    public int Seed { get; set; } = Random.Shared.Next();
    public long ArenaBytes { get; set; } = 256L << 20;
    public int FillPercent { get; set; } = 80;
    public int UnmovablePercent { get; set; } = 20;
    public int MinSize { get; set; } = 16;
    public int MaxSize { get; set; } = 256 * 1024;

    public static bool TryParse(string[] args, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out DemoOptions? options, out string? error)
    {
        options = new DemoOptions();
        error = null;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (a == "--verbose") { options.Verbose = true; continue; }
            if (a == "--out" && i + 1 < args.Length) { options.OutDirectory = args[++i]; continue; }
            if (i + 1 >= args.Length || !long.TryParse(args[i + 1], NumberStyles.Integer, CultureInfo.InvariantCulture, out long v))
            {
                error = $"'{a}' needs a number";
                options = null;
                return false;
            }
            i++;
            switch (a)
            {
                case "--seed" when v is >= int.MinValue and <= int.MaxValue: options.Seed = (int)v; break;
                case "--arena-mib" when v is >= 8 and <= 1 << 20: options.ArenaBytes = v << 20; break;
                case "--fill-percent" when v is >= 1 and <= 100: options.FillPercent = (int)v; break;
                case "--unmovable-percent" when v is >= 0 and <= 100: options.UnmovablePercent = (int)v; break;
                default:
                    error = $"unknown option or value out of range: {a} {v}";
                    options = null;
                    return false;
            }
        }
        return true;
    }
}

/// <summary>One block of the demo: its handle, kind, requested size and the id written into it.</summary>
public readonly record struct DemoBlock(BlockHandle Handle, BlockKind Kind, int Size, long Id)
{
    /// <summary>The byte that fills the block after its id.</summary>
    public static byte Fill(long id) => (byte)((ulong)id * 0x9E3779B97F4A7C15UL >> 56);

    /// <summary>The id (little-endian, as much of it as fits), then <see cref="Fill"/>.</summary>
    public static void Write(Span<byte> span, long id)
    {
        Span<byte> header = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(header, id);
        int n = Math.Min(8, span.Length);
        header[..n].CopyTo(span);
        span[n..].Fill(Fill(id));
    }

    public static bool Check(ReadOnlySpan<byte> span, long id)
    {
        Span<byte> header = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(header, id);
        int n = Math.Min(8, span.Length);
        return span[..n].SequenceEqual(header[..n]) && !span[n..].ContainsAnyExcept(Fill(id));
    }
}

/// <summary>The state the phases share: the heap, the seeded random source and the live blocks.</summary>
public sealed class DemoRun : IDisposable
{
    public DemoRun(DemoOptions options)
    {
        Options = options;
        Rng = new Random(options.Seed);
        // Direct compaction is off, so that the first probe shows what fragmentation leaves and the compaction phase
        // shows what Compact() gives back (with it on, the first probe would already compact).
        Heap = new NativeHeap(new HeapOptions { ArenaBytes = options.ArenaBytes, DirectCompaction = false });
    }

    public DemoOptions Options { get; }
    public Random Rng { get; }
    public NativeHeap Heap { get; }
    /// <summary>The live blocks (after <see cref="DemoScenario.FreeRandomHalf"/>: the survivors).</summary>
    public List<DemoBlock> Blocks { get; } = [];
    public long NextId { get; set; }

    public void Dispose() => Heap.Dispose();
}
