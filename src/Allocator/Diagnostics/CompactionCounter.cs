namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// The compaction counters, declared once: each is an index into <see cref="CompactionStatistics"/>' values, and the
/// public property of the same name reads it. Kernel names (/proc/vmstat) where the kernel has the counter.
/// </summary>
internal enum CompactionCounter
{
    CompactStall,
    CompactFail,
    CompactSuccess,
    CompactMigrateScanned,
    CompactFreeScanned,
    CompactIsolated,
    /// <summary>Free pages the free scanner took straight from the free lists (a block of a unit's size above the
    /// migrate scanner), after its walk down had stopped.</summary>
    FreeListIsolated,
    PgmigrateSuccess,
    PgmigrateFail,
    CompactDaemonWake,
    CompactDaemonMigrateScanned,
    CompactDaemonFreeScanned,
    PagesCompacted,
    LockAcquisitions,
    PinnedPagesSkipped,
    CacheHeldFailures,
    BytesMoved,
    BytesDecommitted,
    CompactDeferred,
    SkipBitsSet,
    Captured,
    ContendedRuns,
    MigrateBusy,
    MigratePinnedAfterFreeze,
    MigrateGone,
    MigrateOwnerRetry,
    MigrateOwnerFailed,
    /// <summary>Process-wide barriers (membarrier) the compactor's migrations issued.</summary>
    Barriers,
    WasteWakes,
    WasteBytesMoved,
    /// <summary>Cycles of a waste-driven run that gave back little for what they moved, each of which halved the
    /// run's CPU share (down to an eighth).</summary>
    WasteBackoffs,
    /// <summary>Times the waste had grown enough since a back-off to give the run its full CPU share again.</summary>
    WasteShareRestores,
    BackgroundCpuNanoseconds,
    /// <summary>CPU the background wakes were charged (the pacing's figure: the process's CPU beyond the other threads'
    /// own rate, or the thread's own if more), nanoseconds.</summary>
    BackgroundChargedCpuNanoseconds,
    LimitSlices,
    LimitBytesMoved,
    LimitBytesDecommitted,
    LimitNanoseconds,
    LimitFailures,
    /// <summary>Not a counter: how many there are.</summary>
    Count,
}
