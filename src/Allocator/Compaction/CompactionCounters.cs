using Compaction.Allocator.Diagnostics;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The live compaction and reclaim counters of one heap, declared once in <see cref="CompactionCounter"/> (the kernel's
/// /proc/vmstat names). The compactor writes them under its run lock; the reclaimer and the allocating threads that
/// keep the memory limit add to theirs with interlocked adds. Read racily: each is a 64-bit value, never torn, and a
/// <see cref="Read"/> may mix values a few updates apart. The API turns a reading into its public snapshot.
/// </summary>
internal sealed class CompactionCounters
{
    private readonly long[] _values = new long[(int)CompactionCounter.Count];

    /// <summary>The live counter <paramref name="counter"/>.</summary>
    public ref long this[CompactionCounter counter] => ref _values[(int)counter];

    /// <summary>A copy of every counter (racy reads of the live values, see the summary).</summary>
    public long[] Read()
    {
        var copy = new long[_values.Length];
        for (int i = 0; i < copy.Length; i++) copy[i] = Volatile.Read(ref _values[i]);
        return copy;
    }

    /// <summary>Every counter now less its value in <paramref name="before"/> (an earlier <see cref="Read"/>): what a
    /// traced pass or wake adds to its event, indexed by <see cref="CompactionCounter"/>. Racy like Read; other runs
    /// between the two readings count too.</summary>
    public long[] Since(long[] before)
    {
        long[] now = Read();
        for (int i = 0; i < now.Length; i++) now[i] -= before[i];
        return now;
    }
}
