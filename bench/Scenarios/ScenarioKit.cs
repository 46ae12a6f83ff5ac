using System.Diagnostics;
using System.Globalization;
using System.Text;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Scenarios;

// Helpers shared by the compaction scenarios (and the demo): seeded workloads that fill and fragment a heap,
// statistics over repeated runs, a latency histogram, resident-memory readings and the markdown report model.

/// <summary>One block a scenario allocated: its handle, requested size, kind and the byte it was filled with.</summary>
public readonly record struct Block(BlockHandle Handle, int Size, BlockKind Kind, byte Pattern);

/// <summary>Seeded block-size distributions.</summary>
public static class SizeMix
{
    /// <summary>Log-uniform sizes in [<paramref name="min"/>, <paramref name="max"/>] (as many blocks of each
    /// doubling), like the demo's 16 B-256 KiB mix.</summary>
    public static Func<Random, int> LogUniform(int min, int max)
    {
        double logMin = Math.Log(min), logMax = Math.Log(max);
        return rng => (int)Math.Min(max, Math.Exp(logMin + rng.NextDouble() * (logMax - logMin)));
    }

    /// <summary>Uniform sizes in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static Func<Random, int> Uniform(int min, int max) => rng => rng.Next(min, max + 1);

    /// <summary>One size.</summary>
    public static Func<Random, int> Fixed(int size) => _ => size;

    /// <summary>Small blocks from <paramref name="small"/> with probability <paramref name="smallShare"/>, else
    /// blocks from <paramref name="large"/>.</summary>
    public static Func<Random, int> Mixed(double smallShare, Func<Random, int> small, Func<Random, int> large) =>
        rng => rng.NextDouble() < smallShare ? small(rng) : large(rng);

    /// <summary>The share of blocks to draw from a small distribution of mean <paramref name="smallMean"/> so that
    /// small and large blocks (mean <paramref name="largeMean"/>) hold the same bytes.</summary>
    public static double HalfTheBytes(double smallMean, double largeMean) => largeMean / (smallMean + largeMean);
}

/// <summary>Seeded heap workloads: fill, write, verify, free at random.</summary>
public static unsafe class HeapWorkload
{
    /// <summary>
    /// Allocates blocks until <paramref name="targetBytes"/> are live or <paramref name="maxFailuresInARow"/>
    /// allocations in a row failed. Sizes and kinds are drawn for every attempt, failed or not, so two heaps that
    /// grant the same requests see the same sequence. Each block is filled with its pattern when
    /// <paramref name="write"/> (so its pages are resident, as a service's data would be).
    /// </summary>
    public static List<Block> Fill(NativeHeap heap, Random rng, long targetBytes, Func<Random, int> size, int unmovablePercent,
                                   out int failures, bool write = true, int maxFailuresInARow = 64, List<Block>? into = null)
    {
        List<Block> blocks = into ?? [];
        long live = 0;
        int inARow = 0;
        failures = 0;
        while (live < targetBytes && inARow < maxFailuresInARow)
        {
            int n = size(rng);
            BlockKind kind = unmovablePercent > 0 && rng.Next(100) < unmovablePercent ? BlockKind.Unmovable : BlockKind.Movable;
            byte pattern = (byte)rng.Next(1, 256);
            if (!heap.TryAllocate(n, kind, out BlockHandle h))
            {
                failures++;
                inARow++;
                continue;
            }
            inARow = 0;
            var b = new Block(h, n, kind, pattern);
            if (write) Write(heap, b);
            blocks.Add(b);
            live += n;
        }
        return blocks;
    }

    /// <summary>How many blocks <see cref="Fill"/> makes from <paramref name="seed"/> when every request succeeds (it
    /// draws the same numbers), so that a caller can size its lists before measuring memory.</summary>
    public static int CountFill(int seed, long targetBytes, Func<Random, int> size, int unmovablePercent)
    {
        var rng = new Random(seed);
        long live = 0;
        int count = 0;
        while (live < targetBytes)
        {
            live += size(rng);
            if (unmovablePercent > 0) rng.Next(100);
            rng.Next(1, 256);
            count++;
        }
        return count;
    }

    /// <summary>A list whose backing array holds <paramref name="capacity"/> items and has been written once, so that
    /// filling it later neither grows the managed heap nor faults in fresh pages (either would show up in RSS).</summary>
    public static List<T> PrefaultedList<T>(int capacity) where T : struct
    {
        var list = new List<T>(capacity);
        System.Runtime.InteropServices.CollectionsMarshal.SetCount(list, capacity);
        System.Runtime.InteropServices.CollectionsMarshal.AsSpan(list).Clear();
        list.Clear();
        return list;
    }

    /// <summary>Fills the block with its pattern: movable blocks through a pin, unmovable ones by stable pointer.</summary>
    public static void Write(NativeHeap heap, in Block b)
    {
        if (b.Kind == BlockKind.Movable)
        {
            using PinScope pin = heap.Pin(b.Handle);
            pin.Span.Fill(b.Pattern);
        }
        else
        {
            new Span<byte>((void*)heap.GetStablePointer(b.Handle), b.Size).Fill(b.Pattern);
        }
    }

    /// <summary>True when the block still has its size and every byte of its pattern.</summary>
    public static bool Verify(NativeHeap heap, in Block b)
    {
        if (heap.GetSize(b.Handle) != b.Size) return false;
        if (b.Kind == BlockKind.Movable)
        {
            using PinScope pin = heap.Pin(b.Handle);
            return !pin.Span.ContainsAnyExcept(b.Pattern);
        }
        return !new ReadOnlySpan<byte>((void*)heap.GetStablePointer(b.Handle), b.Size).ContainsAnyExcept(b.Pattern);
    }

    /// <summary>Blocks whose size or bytes are wrong (0 when all are intact).</summary>
    public static int CountCorrupt(NativeHeap heap, List<Block> blocks)
    {
        int corrupt = 0;
        foreach (Block b in blocks)
            if (!Verify(heap, b)) corrupt++;
        return corrupt;
    }

    /// <summary>Frees a seeded random <paramref name="numerator"/>/<paramref name="denominator"/> of the blocks;
    /// the survivors stay in <paramref name="blocks"/> (in shuffled order). Returns the bytes freed.</summary>
    public static long FreeRandom(NativeHeap heap, List<Block> blocks, Random rng, int numerator, int denominator)
    {
        for (int i = blocks.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (blocks[i], blocks[j]) = (blocks[j], blocks[i]);
        }
        int count = (int)((long)blocks.Count * numerator / denominator);
        long bytes = 0;
        for (int i = 0; i < count; i++)
        {
            heap.Free(blocks[i].Handle);
            bytes += blocks[i].Size;
        }
        blocks.RemoveRange(0, count);
        return bytes;
    }

    /// <summary>Frees every block and empties the list.</summary>
    public static void FreeAll(NativeHeap heap, List<Block> blocks)
    {
        foreach (Block b in blocks) heap.Free(b.Handle);
        blocks.Clear();
    }

    /// <summary>Frees every handle and empties the list.</summary>
    public static void FreeAll(NativeHeap heap, List<BlockHandle> handles)
    {
        foreach (BlockHandle h in handles) heap.Free(h);
        handles.Clear();
    }

    /// <summary>Bytes of a pageblock.</summary>
    public static long PageblockBytes(NativeHeap heap) => (long)heap.Options.PageSize * heap.Options.PageblockPages;

    /// <summary>Wholly free pageblocks of a zone: its free blocks of pageblock order or more, in pageblocks.</summary>
    public static long FreePageblocks(ZoneStatistics zone, int pageblockPages)
    {
        int pbOrder = System.Numerics.BitOperations.Log2((uint)pageblockPages);
        long[] free = zone.FreeBlocksPerOrder();
        long pageblocks = 0;
        for (int o = pbOrder; o < free.Length; o++) pageblocks += free[o] << (o - pbOrder);
        return pageblocks;
    }

    /// <summary>
    /// How many pageblock-sized movable blocks the free memory could hold at best: the movable zone's free pages
    /// over pageblock pages (compaction can gather them) plus the normal zone's wholly free pageblocks (movable
    /// requests fall back to them, but compaction never works there).
    /// </summary>
    public static long IdealPageblocks(HeapStatistics s)
    {
        long ideal = 0;
        foreach (ZoneStatistics z in s.Zones)
            ideal += z.Name == "Movable" ? z.FreePages / s.PageblockPages : FreePageblocks(z, s.PageblockPages);
        return ideal;
    }

    /// <summary>The zone statistics named <paramref name="name"/> ("Normal" or "Movable"), or null.</summary>
    public static ZoneStatistics? Zone(HeapStatistics s, string name) => s.Zones.FirstOrDefault(z => z.Name == name);
}

/// <summary>Order statistics over repeated runs.</summary>
public static class Stats
{
    /// <summary>The median (mean of the two middle values for an even count); NaN for none.</summary>
    public static double Median(IEnumerable<double> values)
    {
        double[] v = values.Order().ToArray();
        if (v.Length == 0) return double.NaN;
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    /// <summary>The nearest-rank <paramref name="p"/>-th percentile (0-100); NaN for none.</summary>
    public static double Percentile(IEnumerable<double> values, double p)
    {
        double[] v = values.Order().ToArray();
        if (v.Length == 0) return double.NaN;
        int rank = (int)Math.Ceiling(p / 100 * v.Length);
        return v[Math.Clamp(rank - 1, 0, v.Length - 1)];
    }

    /// <summary>Microseconds in <paramref name="ticks"/> Stopwatch ticks.</summary>
    public static double Us(long ticks) => ticks * 1e6 / Stopwatch.Frequency;

    /// <summary>Microseconds in <paramref name="ticks"/> Stopwatch ticks.</summary>
    public static double Us(double ticks) => ticks * 1e6 / Stopwatch.Frequency;
}

/// <summary>
/// A log-linear latency histogram of Stopwatch ticks (HdrHistogram-like: 64 sub-buckets per power of two, so a
/// percentile is within 1.6% of the true value; the maximum is exact). Recording is a few instructions and allocates
/// nothing; one histogram per thread, merged afterwards.
/// </summary>
public sealed class LatencyHistogram
{
    private const int SubBits = 6, Sub = 1 << SubBits;
    private readonly long[] _counts = new long[64 * Sub];

    public long Count { get; private set; }
    public long Max { get; private set; }

    public void Record(long ticks)
    {
        if (ticks < 0) ticks = 0;
        _counts[Bucket(ticks)]++;
        Count++;
        if (ticks > Max) Max = ticks;
    }

    public void Add(LatencyHistogram other)
    {
        for (int i = 0; i < _counts.Length; i++) _counts[i] += other._counts[i];
        Count += other.Count;
        Max = Math.Max(Max, other.Max);
    }

    public void Clear()
    {
        Array.Clear(_counts);
        Count = 0;
        Max = 0;
    }

    /// <summary>The <paramref name="p"/>-th percentile (0-100) in ticks: the upper edge of its bucket, at most the maximum.</summary>
    public long Percentile(double p)
    {
        if (Count == 0) return 0;
        long rank = Math.Max(1, (long)Math.Ceiling(p / 100 * Count)), seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= rank) return Math.Min(UpperEdge(i), Max);
        }
        return Max;
    }

    private static int Bucket(long v)
    {
        if (v < Sub) return (int)v;
        int msb = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)v);
        int shift = msb - SubBits;
        return ((shift + 1) << SubBits) + (int)((v >> shift) & (Sub - 1));
    }

    private static long UpperEdge(int bucket)
    {
        if (bucket < Sub) return bucket;
        int shift = (bucket >> SubBits) - 1;
        long low = ((long)Sub + (bucket & (Sub - 1))) << shift;
        return low + (1L << shift) - 1;
    }
}

/// <summary>Resident memory of this process (Linux /proc), or null elsewhere.</summary>
public static class ProcessMemory
{
    /// <summary>Resident bytes of this process, or of process <paramref name="pid"/>: the second field of
    /// /proc/PID/statm times the page size; null when it cannot be read (no /proc, or the process has ended).</summary>
    public static long? ResidentBytes(int? pid = null)
    {
        try
        {
            string statm = $"/proc/{(pid is int p ? p.ToString(CultureInfo.InvariantCulture) : "self")}/statm";
            if (!File.Exists(statm)) return null;
            string[] fields = File.ReadAllText(statm).Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(fields[1], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>A field of /proc/self/smaps_rollup in bytes (e.g. "AnonHugePages"), or null.</summary>
    public static long? RollupBytes(string field)
    {
        try
        {
            if (!File.Exists("/proc/self/smaps_rollup")) return null;
            foreach (string line in File.ReadLines("/proc/self/smaps_rollup"))
            {
                if (!line.StartsWith(field + ":", StringComparison.Ordinal)) continue;
                string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024;
            }
            return null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static readonly nint s_mallocTrim = LoadMallocTrim();

    private static nint LoadMallocTrim() =>
        OperatingSystem.IsLinux() && System.Runtime.InteropServices.NativeLibrary.TryLoad("libc.so.6", out nint libc)
        && System.Runtime.InteropServices.NativeLibrary.TryGetExport(libc, "malloc_trim", out nint trim) ? trim : 0;

    /// <summary>glibc's malloc_trim(0): gives glibc's free memory back to the OS. False where there is no glibc.</summary>
    public static unsafe bool TrimGlibc()
    {
        if (s_mallocTrim == 0) return false;
        ((delegate* unmanaged<nuint, int>)s_mallocTrim)(0);
        return true;
    }

    /// <summary>
    /// Resident bytes after a full garbage collection and a glibc trim: the baseline to measure growth from. Without the
    /// trim, memory that an earlier run freed to glibc (a disposed heap's handle table, say) stays resident and is
    /// silently reused by the next run, which then looks smaller than it is.
    /// </summary>
    public static long? SettledResidentBytes()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        TrimGlibc();
        return ResidentBytes();
    }

    /// <summary>"Rss: N kB, AnonHugePages: N kB" for this process, or null.</summary>
    public static string? Summary()
    {
        long? rss = RollupBytes("Rss"), huge = RollupBytes("AnonHugePages");
        return rss == null ? null : $"Rss: {rss / 1024} kB, AnonHugePages: {huge / 1024} kB";
    }
}

/// <summary>A markdown table built row by row.</summary>
public sealed class MarkdownTable(params string[] header)
{
    private readonly List<string[]> _rows = [];

    /// <summary>Columns whose header starts with '<' are left-aligned; the rest right-aligned (numbers).</summary>
    public MarkdownTable Add(params string[] cells)
    {
        if (cells.Length != header.Length) throw new ArgumentException($"{cells.Length} cells for {header.Length} columns");
        _rows.Add(cells);
        return this;
    }

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append('|');
        foreach (string h in header) sb.Append(' ').Append(h.TrimStart('<')).Append(" |");
        sb.AppendLine();
        sb.Append('|');
        foreach (string h in header) sb.Append(h.StartsWith('<') ? "---|" : "---:|");
        sb.AppendLine();
        foreach (string[] row in _rows) sb.Append("| ").AppendJoin(" | ", row).AppendLine(" |");
        return sb.ToString();
    }
}

/// <summary>One line of the summary table: a figure without and with compaction, and the goal it is held to.</summary>
public sealed record SummaryRow(string Scenario, string Metric, string Baseline, string WithCompaction, string Result, string Goal, bool? Met);

/// <summary>What a scenario hands back to the <c>compaction</c> command.</summary>
public sealed class ScenarioReport
{
    public required string Name { get; init; }
    public required string Title { get; init; }
    /// <summary>How the scenario is set up, in a paragraph.</summary>
    public required string Setup { get; init; }
    public List<MarkdownTable> Tables { get; } = [];
    public List<SummaryRow> Summary { get; } = [];
    public List<string> Notes { get; } = [];
    public TimeSpan Elapsed { get; set; }
    /// <summary>Blocks whose bytes were wrong after compaction (a correctness failure, not a missed goal).</summary>
    public int CorruptBlocks { get; set; }
}

/// <summary>Number formatting shared by the scenarios (invariant culture).</summary>
public static class Fmt
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    public static string F(double v, int digits = 1) => double.IsNaN(v) ? "n/a" : v.ToString("F" + digits, Inv);
    public static string N(long v) => v.ToString("N0", Inv);
    public static string Mib(long bytes) => (bytes / (1024.0 * 1024)).ToString("F1", Inv) + " MiB";
    public static string Pct(double v) => double.IsNaN(v) ? "n/a" : v.ToString("F1", Inv) + "%";
    public static string Us(double us) => double.IsNaN(us) ? "n/a" : us < 10 ? us.ToString("F2", Inv) : us < 1000 ? us.ToString("F1", Inv) : us.ToString("N0", Inv);
    public static string X(double ratio) => double.IsNaN(ratio) || double.IsInfinity(ratio) ? "n/a" : ratio.ToString(ratio < 10 ? "F2" : "F0", Inv) + "x";
}
