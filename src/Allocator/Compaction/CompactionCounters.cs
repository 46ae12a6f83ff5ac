namespace Compaction.Allocator;

/// <summary>
/// Compaction event counters by the kernel's vmstat names. Written by the compacting thread, which holds the
/// compaction lock (one compaction at a time), read racily by <see cref="Snapshot"/>.
/// </summary>
internal sealed class CompactionCounters
{
    public long CompactStall, CompactFail, CompactSuccess;
    public long CompactMigrateScanned, CompactFreeScanned, CompactIsolated;
    public long PgmigrateSuccess, PgmigrateFail;
    public long CompactDaemonWake, CompactDaemonMigrateScanned, CompactDaemonFreeScanned;
    public long PagesCompacted, LockAcquisitions, PinnedPagesSkipped, CacheHeldFailures;
    public long BytesMoved, BytesDecommitted, CompactDeferred, SkipBitsSet, Captured, ContendedRuns;
    public long MigrateBusy, MigratePinnedAfterFreeze, MigrateGone, MigrateOwnerRetry, MigrateOwnerFailed;

    /// <summary>Counts one block migration outcome (every attempt, including the ones later retried).</summary>
    public void CountOutcome(MigrateResult result)
    {
        switch (result)
        {
            case MigrateResult.Busy: MigrateBusy++; break;
            case MigrateResult.Pinned: MigratePinnedAfterFreeze++; break;
            case MigrateResult.Gone: MigrateGone++; break;
            case MigrateResult.OwnerRetry: MigrateOwnerRetry++; break;
            case MigrateResult.OwnerFailed: MigrateOwnerFailed++; break;
        }
    }

    public CompactionStatistics Snapshot() => new()
    {
        CompactStall = Volatile.Read(ref CompactStall),
        CompactFail = Volatile.Read(ref CompactFail),
        CompactSuccess = Volatile.Read(ref CompactSuccess),
        CompactMigrateScanned = Volatile.Read(ref CompactMigrateScanned),
        CompactFreeScanned = Volatile.Read(ref CompactFreeScanned),
        CompactIsolated = Volatile.Read(ref CompactIsolated),
        PgmigrateSuccess = Volatile.Read(ref PgmigrateSuccess),
        PgmigrateFail = Volatile.Read(ref PgmigrateFail),
        CompactDaemonWake = Volatile.Read(ref CompactDaemonWake),
        CompactDaemonMigrateScanned = Volatile.Read(ref CompactDaemonMigrateScanned),
        CompactDaemonFreeScanned = Volatile.Read(ref CompactDaemonFreeScanned),
        PagesCompacted = Volatile.Read(ref PagesCompacted),
        LockAcquisitions = Volatile.Read(ref LockAcquisitions),
        PinnedPagesSkipped = Volatile.Read(ref PinnedPagesSkipped),
        CacheHeldFailures = Volatile.Read(ref CacheHeldFailures),
        BytesMoved = Volatile.Read(ref BytesMoved),
        BytesDecommitted = Volatile.Read(ref BytesDecommitted),
        CompactDeferred = Volatile.Read(ref CompactDeferred),
        SkipBitsSet = Volatile.Read(ref SkipBitsSet),
        Captured = Volatile.Read(ref Captured),
        ContendedRuns = Volatile.Read(ref ContendedRuns),
        MigrateBusy = Volatile.Read(ref MigrateBusy),
        MigratePinnedAfterFreeze = Volatile.Read(ref MigratePinnedAfterFreeze),
        MigrateGone = Volatile.Read(ref MigrateGone),
        MigrateOwnerRetry = Volatile.Read(ref MigrateOwnerRetry),
        MigrateOwnerFailed = Volatile.Read(ref MigrateOwnerFailed),
    };
}

/// <summary>Compaction counters (cumulative since the heap was created, or the difference over one run), named
/// after the kernel's /proc/vmstat fields.</summary>
public sealed record CompactionStatistics
{
    /// <summary>Direct compactions started because an allocation failed.</summary>
    public long CompactStall { get; init; }
    /// <summary>Direct compactions that did not make the allocation possible.</summary>
    public long CompactFail { get; init; }
    /// <summary>Direct compactions after which the allocation succeeded.</summary>
    public long CompactSuccess { get; init; }
    /// <summary>Pages the migrate scanner looked at.</summary>
    public long CompactMigrateScanned { get; init; }
    /// <summary>Pages the free scanner looked at.</summary>
    public long CompactFreeScanned { get; init; }
    /// <summary>Pages isolated: movable pages by the migrate scanner and free pages by the free scanner.</summary>
    public long CompactIsolated { get; init; }
    /// <summary>Pages migrated.</summary>
    public long PgmigrateSuccess { get; init; }
    /// <summary>Pages whose migration failed after all retries.</summary>
    public long PgmigrateFail { get; init; }
    /// <summary>Background compactor wake-ups.</summary>
    public long CompactDaemonWake { get; init; }
    /// <summary>Pages the migrate scanner looked at in background runs.</summary>
    public long CompactDaemonMigrateScanned { get; init; }
    /// <summary>Pages the free scanner looked at in background runs.</summary>
    public long CompactDaemonFreeScanned { get; init; }
    /// <summary>Pages freed by slab consolidation (zsmalloc's pages_compacted).</summary>
    public long PagesCompacted { get; init; }
    /// <summary>Class and zone locks the compactor took.</summary>
    public long LockAcquisitions { get; init; }
    /// <summary>Pages rejected as pinned by the lock-free check, before any lock (seed 000).</summary>
    public long PinnedPagesSkipped { get; init; }
    /// <summary>Slab migrations that failed because a per-thread cache held a slot of the slab (seed 001).</summary>
    public long CacheHeldFailures { get; init; }
    /// <summary>Bytes copied by compaction.</summary>
    public long BytesMoved { get; init; }
    /// <summary>Bytes of emptied pageblocks returned to the OS by the background compactor's trim.</summary>
    public long BytesDecommitted { get; init; }
    /// <summary>Direct compactions skipped by deferral.</summary>
    public long CompactDeferred { get; init; }
    /// <summary>Pageblock skip bits set.</summary>
    public long SkipBitsSet { get; init; }
    /// <summary>Direct compactions that captured the freed run for the requester.</summary>
    public long Captured { get; init; }
    /// <summary>Asynchronous runs that stopped on lock contention.</summary>
    public long ContendedRuns { get; init; }

    /// <summary>Block migrations that found the block frozen, changed or refused by its owner's isolate (transient).</summary>
    public long MigrateBusy { get; init; }
    /// <summary>Block migrations that found a pin slot after the freeze and barrier (transient; the cheap check cannot
    /// see short-term pins).</summary>
    public long MigratePinnedAfterFreeze { get; init; }
    /// <summary>Block migrations whose block was freed or moved by someone else meanwhile.</summary>
    public long MigrateGone { get; init; }
    /// <summary>Owner callbacks that answered "try again".</summary>
    public long MigrateOwnerRetry { get; init; }
    /// <summary>Owner callbacks that threw (the block stayed intact).</summary>
    public long MigrateOwnerFailed { get; init; }

    /// <summary>Compaction efficiency: compact_success * 100 / compact_stall.</summary>
    public double CompactionEfficiency => CompactStall == 0 ? 0 : CompactSuccess * 100.0 / CompactStall;
    /// <summary>Scan efficiency: compact_migrate_scanned * 100 / compact_free_scanned.</summary>
    public double ScanEfficiency => CompactFreeScanned == 0 ? 0 : CompactMigrateScanned * 100.0 / CompactFreeScanned;

    /// <summary>The counters of <paramref name="after"/> minus those of <paramref name="before"/>.</summary>
    public static CompactionStatistics operator -(CompactionStatistics after, CompactionStatistics before) => new()
    {
        CompactStall = after.CompactStall - before.CompactStall,
        CompactFail = after.CompactFail - before.CompactFail,
        CompactSuccess = after.CompactSuccess - before.CompactSuccess,
        CompactMigrateScanned = after.CompactMigrateScanned - before.CompactMigrateScanned,
        CompactFreeScanned = after.CompactFreeScanned - before.CompactFreeScanned,
        CompactIsolated = after.CompactIsolated - before.CompactIsolated,
        PgmigrateSuccess = after.PgmigrateSuccess - before.PgmigrateSuccess,
        PgmigrateFail = after.PgmigrateFail - before.PgmigrateFail,
        CompactDaemonWake = after.CompactDaemonWake - before.CompactDaemonWake,
        CompactDaemonMigrateScanned = after.CompactDaemonMigrateScanned - before.CompactDaemonMigrateScanned,
        CompactDaemonFreeScanned = after.CompactDaemonFreeScanned - before.CompactDaemonFreeScanned,
        PagesCompacted = after.PagesCompacted - before.PagesCompacted,
        LockAcquisitions = after.LockAcquisitions - before.LockAcquisitions,
        PinnedPagesSkipped = after.PinnedPagesSkipped - before.PinnedPagesSkipped,
        CacheHeldFailures = after.CacheHeldFailures - before.CacheHeldFailures,
        BytesMoved = after.BytesMoved - before.BytesMoved,
        BytesDecommitted = after.BytesDecommitted - before.BytesDecommitted,
        CompactDeferred = after.CompactDeferred - before.CompactDeferred,
        SkipBitsSet = after.SkipBitsSet - before.SkipBitsSet,
        Captured = after.Captured - before.Captured,
        ContendedRuns = after.ContendedRuns - before.ContendedRuns,
        MigrateBusy = after.MigrateBusy - before.MigrateBusy,
        MigratePinnedAfterFreeze = after.MigratePinnedAfterFreeze - before.MigratePinnedAfterFreeze,
        MigrateGone = after.MigrateGone - before.MigrateGone,
        MigrateOwnerRetry = after.MigrateOwnerRetry - before.MigrateOwnerRetry,
        MigrateOwnerFailed = after.MigrateOwnerFailed - before.MigrateOwnerFailed,
    };
}
