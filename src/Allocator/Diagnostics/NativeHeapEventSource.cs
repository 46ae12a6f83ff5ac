using System.Diagnostics;
using System.Diagnostics.Tracing;

namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// The heap's events (EventSource <c>Compaction-NativeHeap</c>): compaction passes with their trigger, counters and
/// duration, migration failures by reason, background wakes and failures, decommits and purges, allocation failures and long-term
/// pin migrations. Collect them with <c>dotnet-trace collect --providers Compaction-NativeHeap</c> (keywords below
/// select them), an <see cref="EventListener"/>, or EventPipe. Every event is raised from the public API's layer,
/// after an <see cref="EventSource.IsEnabled(EventLevel, EventKeywords)"/> check, so with no listener a call costs one
/// load and a branch, and nothing on the allocation, free or pin fast paths raises one.
/// </summary>
[EventSource(Name = SourceName)]
public sealed class NativeHeapEventSource : EventSource
{
    /// <summary>The provider's name.</summary>
    public const string SourceName = "Compaction-NativeHeap";

    /// <summary>The one instance.</summary>
    public static readonly NativeHeapEventSource Log = new();

    private NativeHeapEventSource() { }

    /// <summary>Keywords selecting the events.</summary>
    public static class Keywords
    {
        /// <summary>Compaction passes (start, stop) and migration failures.</summary>
        public const EventKeywords Compaction = (EventKeywords)1;
        /// <summary>Background wakes.</summary>
        public const EventKeywords Background = (EventKeywords)2;
        /// <summary>Decommits and purges.</summary>
        public const EventKeywords Reclaim = (EventKeywords)4;
        /// <summary>Allocation failures.</summary>
        public const EventKeywords Allocation = (EventKeywords)8;
        /// <summary>Long-term pin migrations.</summary>
        public const EventKeywords LongTermPin = (EventKeywords)16;
        /// <summary>Work allocations did to stay under the memory limit, and allocations it refused.</summary>
        public const EventKeywords MemoryLimit = (EventKeywords)32;
    }

    /// <summary>Tasks (start/stop pairs).</summary>
    public static class Tasks
    {
        /// <summary>A compaction pass.</summary>
        public const EventTask Compaction = (EventTask)1;
    }

    internal const int CompactionStartId = 1, CompactionStopId = 2, MigrationFailedId = 3, BackgroundWakeId = 4, ReleasedId = 5,
                       AllocationFailedId = 6, LongTermPinMigrationId = 7, BackgroundFailedId = 8, UseAfterFreeDetectedId = 9,
                       LimitSliceId = 10, LimitFailedId = 11, WasteShareChangedId = 12;

    /// <summary>A compaction pass begins: <paramref name="trigger"/> is explicit (Compact()) or direct (an allocation
    /// that failed); <paramref name="mode"/> the kernel's migrate mode: sync_full for an explicit pass (every class
    /// consolidated, then the whole zone), async_then_sync_light for a direct one. Background wakes are
    /// <see cref="BackgroundWake"/> events.</summary>
    [Event(CompactionStartId, Level = EventLevel.Informational, Keywords = Keywords.Compaction, Task = Tasks.Compaction, Opcode = EventOpcode.Start)]
    public void CompactionStart(long heapId, string trigger, string mode) => WriteEvent(CompactionStartId, heapId, trigger, mode);

    /// <summary>A compaction pass ends, with what it did (its counters' differences: pages scanned by the migrate
    /// scanner, pages migrated, bytes moved) and how long it took; <paramref name="result"/> is moved, nothing_moved
    /// or skipped (nothing scanned: deferred, or nothing to do).</summary>
    [Event(CompactionStopId, Level = EventLevel.Informational, Keywords = Keywords.Compaction, Task = Tasks.Compaction, Opcode = EventOpcode.Stop)]
    public void CompactionStop(long heapId, string trigger, string mode, string result, long pagesScanned, long pagesMigrated, long bytesMoved, double durationMs) =>
        WriteEvent(CompactionStopId, heapId, trigger, mode, result, pagesScanned, pagesMigrated, bytesMoved, durationMs);

    /// <summary>Migrations that failed during one pass, for one reason (busy, pinned_after_freeze, gone, owner_retry,
    /// owner_failed, cache_held, pinned_skipped, pgmigrate_fail).</summary>
    [Event(MigrationFailedId, Level = EventLevel.Informational, Keywords = Keywords.Compaction)]
    public void MigrationFailed(long heapId, string reason, long count) => WriteEvent(MigrationFailedId, heapId, reason, count);

    /// <summary>One wake of the background thread: what it ran (waste, proactive, consolidation or idle), its bytes
    /// moved, its duration, and the waste ratio after it (resident bytes over live bytes).</summary>
    [Event(BackgroundWakeId, Level = EventLevel.Verbose, Keywords = Keywords.Background)]
    public void BackgroundWake(long heapId, string trigger, long bytesMoved, double durationMs, double wasteRatio) =>
        WriteEvent(BackgroundWakeId, heapId, trigger, bytesMoved, durationMs, wasteRatio);

    /// <summary>An exception ended the background compactor thread: its type and message. The heap stays usable and
    /// consistent (the step's locks, frozen entries and isolated pages were given back on the way out); the thread
    /// no longer runs until <see cref="NativeHeap.StartBackgroundCompaction"/> (counted in
    /// <see cref="HeapStatistics.BackgroundFailures"/>).</summary>
    [Event(BackgroundFailedId, Level = EventLevel.Error, Keywords = Keywords.Background)]
    public void BackgroundFailed(long heapId, string exceptionType, string message) =>
        WriteEvent(BackgroundFailedId, heapId, exceptionType, message);

    /// <summary>Memory given back to the OS: decommitted pageblocks and purged free runs, by which path (explicit,
    /// background).</summary>
    [Event(ReleasedId, Level = EventLevel.Informational, Keywords = Keywords.Reclaim)]
    public void Released(long heapId, string path, long bytesDecommitted, long bytesPurged) =>
        WriteEvent(ReleasedId, heapId, path, bytesDecommitted, bytesPurged);

    /// <summary>An allocation the arena could not serve.</summary>
    [Event(AllocationFailedId, Level = EventLevel.Warning, Keywords = Keywords.Allocation)]
    public void AllocationFailed(long heapId, long size, string kind) => WriteEvent(AllocationFailedId, heapId, size, kind);

    /// <summary>A write through a stale pointer was found (<see cref="HeapOptions.PoisonFreedMemory"/>): storage
    /// being handed out again no longer held the poison its free left there. <paramref name="address"/> is the first
    /// changed byte, <paramref name="bytesChanged"/> how many bytes of the storage changed.</summary>
    [Event(UseAfterFreeDetectedId, Level = EventLevel.Error, Keywords = Keywords.Allocation)]
    public void UseAfterFreeDetected(long heapId, long address, long bytesChanged) => WriteEvent(UseAfterFreeDetectedId, heapId, address, bytesChanged);

    /// <summary>Blocks a long-term pin call moved out of movable memory, and their bytes.</summary>

    [Event(LongTermPinMigrationId, Level = EventLevel.Informational, Keywords = Keywords.LongTermPin)]
    public void LongTermPinMigration(long heapId, long blocks, long bytes) => WriteEvent(LongTermPinMigrationId, heapId, blocks, bytes);

    /// <summary>One slice of work an allocation did to stay under <see cref="HeapOptions.MemoryLimit"/>: bytes
    /// decommitted and moved, and how long the allocating thread spent in it.</summary>
    [Event(LimitSliceId, Level = EventLevel.Informational, Keywords = Keywords.MemoryLimit)]
    public void LimitSlice(long heapId, long bytesDecommitted, long bytesMoved, double durationMs) =>
        WriteEvent(LimitSliceId, heapId, bytesDecommitted, bytesMoved, durationMs);

    /// <summary>An allocation the memory limit refused, with the reason (live bytes above the limit, or pinned and
    /// unmovable blocks holding the committed memory).</summary>
    [Event(LimitFailedId, Level = EventLevel.Warning, Keywords = Keywords.MemoryLimit)]
    public void LimitFailed(long heapId, long size, long limit, string reason) => WriteEvent(LimitFailedId, heapId, size, limit, reason);

    /// <summary>The waste-driven run's CPU share changed: lowered (<paramref name="lowered"/> true) after a cycle that
    /// gave back less than a quarter of what it moved, or restored when the waste grew again; it is now
    /// <paramref name="sharePercent"/> percent of a core.</summary>
    [Event(WasteShareChangedId, Level = EventLevel.Informational, Keywords = Keywords.Background)]
    public void WasteShareChanged(long heapId, bool lowered, double sharePercent) => WriteEvent(WasteShareChangedId, heapId, lowered, sharePercent);

    /// <summary>The compaction events of one pass, from its counters' difference (<paramref name="d"/>, indexed by
    /// <see cref="CompactionCounter"/>: the raw counters, so that the layers below the API can trace a pass without
    /// the API's snapshot type).</summary>
    [NonEvent]
    internal void Pass(long heapId, string trigger, string mode, long[] d, TimeSpan took)
    {
        long scanned = d[(int)CompactionCounter.CompactMigrateScanned] + d[(int)CompactionCounter.CompactDaemonMigrateScanned];
        long migrated = d[(int)CompactionCounter.PgmigrateSuccess];
        string result = migrated > 0 ? "moved" : scanned > 0 ? "nothing_moved" : "skipped";
        CompactionStop(heapId, trigger, mode, result, scanned, migrated, d[(int)CompactionCounter.BytesMoved], took.TotalMilliseconds);
        Failures(heapId, d);
    }

    /// <summary>One MigrationFailed event per reason a pass (or wake) met, from its counters' difference.</summary>
    [NonEvent]
    internal void Failures(long heapId, long[] d)
    {
        Failure(heapId, "busy", d[(int)CompactionCounter.MigrateBusy]);
        Failure(heapId, "pinned_after_freeze", d[(int)CompactionCounter.MigratePinnedAfterFreeze]);
        Failure(heapId, "gone", d[(int)CompactionCounter.MigrateGone]);
        Failure(heapId, "owner_retry", d[(int)CompactionCounter.MigrateOwnerRetry]);
        Failure(heapId, "owner_failed", d[(int)CompactionCounter.MigrateOwnerFailed]);
        Failure(heapId, "cache_held", d[(int)CompactionCounter.CacheHeldFailures]);
        Failure(heapId, "pinned_skipped", d[(int)CompactionCounter.PinnedPagesSkipped]);
    }

    [NonEvent]
    private void Failure(long heapId, string reason, long count)
    {
        if (count > 0) MigrationFailed(heapId, reason, count);
    }
}
