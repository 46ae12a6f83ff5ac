using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Diagnostics;

/// <summary>Compaction counters (cumulative since the heap was created, or the difference over one run), named
/// after the kernel's /proc/vmstat fields.</summary>
/// <remarks>A snapshot: the heap's live counters are read racily (each a 64-bit value, never torn), so a snapshot may
/// mix values a few updates apart.</remarks>
public sealed class CompactionStatistics
{
    private readonly long[] _values;

    /// <summary>All counters zero.</summary>
    public CompactionStatistics() => _values = new long[(int)Count];

    /// <summary>A snapshot of the values read from a heap's live counters (one per <see cref="CompactionCounter"/>).</summary>
    internal CompactionStatistics(long[] values)
    {
        System.Diagnostics.Debug.Assert(values.Length == (int)Count);
        _values = values;
    }

    internal long Get(CompactionCounter counter) => _values[(int)counter];

    /// <summary>Direct compactions started because an allocation failed.</summary>
    public long CompactStall => Get(CompactionCounter.CompactStall);
    /// <summary>Direct compactions that did not make the allocation possible.</summary>
    public long CompactFail => Get(CompactionCounter.CompactFail);
    /// <summary>Direct compactions after which the allocation succeeded.</summary>
    public long CompactSuccess => Get(CompactionCounter.CompactSuccess);
    /// <summary>Pages the migrate scanner looked at.</summary>
    public long CompactMigrateScanned => Get(CompactionCounter.CompactMigrateScanned);
    /// <summary>Pages the free scanner looked at.</summary>
    public long CompactFreeScanned => Get(CompactionCounter.CompactFreeScanned);
    /// <summary>Pages isolated: movable pages by the migrate scanner and free pages by the free scanner.</summary>
    public long CompactIsolated => Get(CompactionCounter.CompactIsolated);
    /// <summary>Free pages the free scanner took straight from the free lists: a block of a unit's size above the
    /// migrate scanner, found after its walk down had stopped (included in <see cref="CompactIsolated"/>).</summary>
    public long FreeListIsolated => Get(CompactionCounter.FreeListIsolated);
    /// <summary>Pages migrated.</summary>
    public long PgmigrateSuccess => Get(CompactionCounter.PgmigrateSuccess);
    /// <summary>Pages whose migration failed after all retries.</summary>
    public long PgmigrateFail => Get(CompactionCounter.PgmigrateFail);
    /// <summary>Background compactor wake-ups.</summary>
    public long CompactDaemonWake => Get(CompactionCounter.CompactDaemonWake);
    /// <summary>Pages the migrate scanner looked at in background runs.</summary>
    public long CompactDaemonMigrateScanned => Get(CompactionCounter.CompactDaemonMigrateScanned);
    /// <summary>Pages the free scanner looked at in background runs.</summary>
    public long CompactDaemonFreeScanned => Get(CompactionCounter.CompactDaemonFreeScanned);
    /// <summary>Pages freed by slab consolidation (zsmalloc's pages_compacted).</summary>
    public long PagesCompacted => Get(CompactionCounter.PagesCompacted);
    /// <summary>Class and zone locks the compactor took.</summary>
    public long LockAcquisitions => Get(CompactionCounter.LockAcquisitions);
    /// <summary>Pages rejected as pinned by the lock-free check, before any lock.</summary>
    public long PinnedPagesSkipped => Get(CompactionCounter.PinnedPagesSkipped);
    /// <summary>Slab migrations that failed because a per-thread cache held a slot of the slab.</summary>
    public long CacheHeldFailures => Get(CompactionCounter.CacheHeldFailures);
    /// <summary>Bytes copied by compaction.</summary>
    public long BytesMoved => Get(CompactionCounter.BytesMoved);
    /// <summary>Bytes of emptied pageblocks returned to the OS by the background compactor's trim.</summary>
    public long BytesDecommitted => Get(CompactionCounter.BytesDecommitted);
    /// <summary>Direct compactions skipped by deferral.</summary>
    public long CompactDeferred => Get(CompactionCounter.CompactDeferred);
    /// <summary>Pageblock skip bits set.</summary>
    public long SkipBitsSet => Get(CompactionCounter.SkipBitsSet);
    /// <summary>Direct compactions that captured the freed run for the requester.</summary>
    public long Captured => Get(CompactionCounter.Captured);
    /// <summary>Asynchronous runs that stopped on lock contention.</summary>
    public long ContendedRuns => Get(CompactionCounter.ContendedRuns);
    /// <summary>Block migrations that found the block frozen by another migration or changed (transient).</summary>
    public long MigrateBusy => Get(CompactionCounter.MigrateBusy);
    /// <summary>Block migrations that found a pin slot after the freeze and barrier (transient; the cheap check cannot
    /// see short-term pins).</summary>
    public long MigratePinnedAfterFreeze => Get(CompactionCounter.MigratePinnedAfterFreeze);
    /// <summary>Block migrations whose block was freed or moved by someone else meanwhile.</summary>
    public long MigrateGone => Get(CompactionCounter.MigrateGone);
    /// <summary>Owner callbacks that answered "try again" or refused to isolate their block (transient).</summary>
    public long MigrateOwnerRetry => Get(CompactionCounter.MigrateOwnerRetry);
    /// <summary>Owner callbacks that threw (the block stayed intact).</summary>
    public long MigrateOwnerFailed => Get(CompactionCounter.MigrateOwnerFailed);
    /// <summary>Process-wide barriers (the membarrier system call, an interrupt of every running thread of the process)
    /// the compactor's migrations issued: one per unit of work (a pageblock of the zone pass, a batch of consolidation
    /// sources), plus one per block with a movable owner (native-layout.md, section 5, "Migration protocol"). Not a
    /// kernel counter.</summary>
    public long Barriers => Get(CompactionCounter.Barriers);

    /// <summary>Background wakes that compacted because committed memory exceeded live memory by the waste
    /// threshold (<see cref="HeapOptions.WasteHighRatio"/>; Redis's active defrag, not a kernel counter).</summary>
    public long WasteWakes => Get(CompactionCounter.WasteWakes);

    /// <summary>Bytes moved by those wakes.</summary>
    public long WasteBytesMoved => Get(CompactionCounter.WasteBytesMoved);

    /// <summary>Cycles of a waste-driven run that gave back less than a quarter of what they moved (moves that
    /// reshuffle memory without emptying pageblocks: pinned or unmovable blocks in the way, or a churn refilling what
    /// the run empties); each halved the run's share of <see cref="HeapOptions.CompactionCpuShare"/>, down to an eighth
    /// (Redis's active defrag lowers its CPU step by step the same way when it frees little).</summary>
    public long WasteBackoffs => Get(CompactionCounter.WasteBackoffs);

    /// <summary>Times the waste grew by <see cref="HeapOptions.WasteMinBytes"/> since a back-off, which gave the
    /// waste-driven run its full CPU share again.</summary>
    public long WasteShareRestores => Get(CompactionCounter.WasteShareRestores);
    /// <summary>Processor time the background thread used in its wakes, in nanoseconds (its own thread's CPU clock;
    /// 0 where the OS has none). Work the mutators do because of it (faulting purged pages back, waiting at the
    /// migration barrier) is not in it.</summary>
    public long BackgroundCpuNanoseconds => Get(CompactionCounter.BackgroundCpuNanoseconds);

    /// <summary>Processor time of the whole process charged to the background thread's wakes, in nanoseconds: for
    /// each wake, the process's CPU time over it less what the other threads spend at the rate they ran while the
    /// thread slept (the barriers, waits and faults its steps cause them), or the thread's own time when that is more.
    /// What keeps a waste-driven run at <see cref="HeapOptions.CompactionCpuShare"/>. The thread's own time where the
    /// OS has no process CPU clock; the wakes' wall time where it has neither clock.</summary>
    public long BackgroundChargedCpuNanoseconds => Get(CompactionCounter.BackgroundChargedCpuNanoseconds);

    /// <summary>Slices of work that allocations did to stay under <see cref="HeapOptions.MemoryLimit"/>: each gives
    /// wholly free pageblocks back and, when that is not enough, compacts for at most
    /// <see cref="HeapOptions.CompactionSliceTime"/> on the allocating thread.</summary>
    public long LimitSlices => Get(CompactionCounter.LimitSlices);

    /// <summary>Bytes those slices moved.</summary>
    public long LimitBytesMoved => Get(CompactionCounter.LimitBytesMoved);

    /// <summary>Bytes those slices decommitted.</summary>
    public long LimitBytesDecommitted => Get(CompactionCounter.LimitBytesDecommitted);

    /// <summary>Wall-clock time allocations spent in those slices, in nanoseconds: what the limit cost the mutators.</summary>
    public long LimitNanoseconds => Get(CompactionCounter.LimitNanoseconds);

    /// <summary>Allocations that failed because the limit could not be kept (live bytes above it, or pinned and
    /// unmovable blocks holding the committed memory).</summary>
    public long LimitFailures => Get(CompactionCounter.LimitFailures);

    /// <summary>Compaction efficiency: compact_success * 100 / compact_stall.</summary>
    public double CompactionEfficiency => CompactStall == 0 ? 0 : CompactSuccess * 100.0 / CompactStall;
    /// <summary>Scan efficiency: compact_migrate_scanned * 100 / compact_free_scanned.</summary>
    public double ScanEfficiency => CompactFreeScanned == 0 ? 0 : CompactMigrateScanned * 100.0 / CompactFreeScanned;

    /// <summary>The counters of <paramref name="after"/> minus those of <paramref name="before"/>.</summary>
    public static CompactionStatistics operator -(CompactionStatistics after, CompactionStatistics before)
    {
        ArgumentNullException.ThrowIfNull(after);
        ArgumentNullException.ThrowIfNull(before);
        var d = new CompactionStatistics();
        for (int i = 0; i < d._values.Length; i++) d._values[i] = after._values[i] - before._values[i];
        return d;
    }

    /// <summary>Every counter as "name value", one per line.</summary>
    public override string ToString()
    {
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < _values.Length; i++) sb.Append((CompactionCounter)i).Append(' ').Append(_values[i]).AppendLine();
        return sb.ToString();
    }
}
