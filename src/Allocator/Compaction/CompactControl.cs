namespace Compaction.Allocator.Compaction;

/// <summary>Compaction priority (the kernel's MIGRATE_ASYNC, COMPACT_PRIO_SYNC_LIGHT, COMPACT_PRIO_SYNC_FULL).</summary>
internal enum CompactMode
{
    /// <summary>Never blocks: try-locks only; stops at the first contended lock. Honours skip bits.</summary>
    Async,
    /// <summary>Blocking locks; honours skip bits.</summary>
    SyncLight,
    /// <summary>Blocking locks; the whole zone, skip bits ignored (and reset first).</summary>
    SyncFull,
}

/// <summary>Why a compaction run ended (the kernel's COMPACT_* results).</summary>
internal enum CompactStatus
{
    Continue,
    /// <summary>The scanners met: the whole zone was scanned.</summary>
    Complete,
    /// <summary>The fragmentation score fell to the low watermark (proactive runs).</summary>
    WatermarkReached,
    /// <summary>The requested run was captured (direct compaction).</summary>
    Success,
    /// <summary>An asynchronous run met a held lock.</summary>
    Contended,
    /// <summary>The pass used its budget of bytes or time.</summary>
    BudgetExhausted,
    /// <summary>No free target was left for a movable unit.</summary>
    NoTargets,
}

/// <summary>The settings and progress of one compaction run (the kernel's struct compact_control).</summary>
internal sealed class CompactControl
{
    public CompactMode Mode;
    public bool WholeZone;
    public bool Proactive;
    public bool Daemon;
    public int CapturePages;          // direct compaction: the run the requester wants (0: none)
    public uint CaptureIndex;         // ... and the handle entry it will carry
    public int CapturedStart = -1;
    public long BudgetBytes;          // 0: unlimited
    public long BudgetTicks;          // ticks of the settings' Clock (its timestamps); 0: unlimited
    public long StartTicks;
    /// <summary>A unit of work (a consolidation batch, a pageblock of the zone pass) was done under this control: the
    /// time budget stops a run only after one, so that every slice advances however slow its clock reads (a slice
    /// preempted before its first unit, or a test clock that moves at every reading, would otherwise stop at once for
    /// ever).</summary>
    public bool Worked;
    /// <summary>Batches are filled whole (up to their block and page caps) even under a time budget, and a pageblock's
    /// units are all tried before the budget may stop the run: the memory limit's slices on an allocating thread,
    /// whose point is to make room (cut to the budget, each made less, and the Redis-style churn's peak rose from
    /// 572.9 to 579-584 MiB, above glibc's 576).</summary>
    public bool WholeBatches;
    public int LowWatermark;
    public long BytesMovedAtStart;
    public bool Contended;
    public bool IgnoreSkipHint;
    public bool IgnoreSkip => IgnoreSkipHint || Mode == CompactMode.SyncFull;
}
