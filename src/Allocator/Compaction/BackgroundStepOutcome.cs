namespace Compaction.Allocator.Compaction;

/// <summary>What one background wake of the compactor did (<see cref="Compactor.BackgroundStep"/>).</summary>
internal enum BackgroundStepOutcome
{
    /// <summary>Another compaction ran (or the calling thread is inside one): nothing was done.</summary>
    Skipped,
    /// <summary>The wake ran (consolidation or a proactive pass, or nothing was due).</summary>
    Ran,
    /// <summary>The wake ran and a waste-driven slice moved blocks: what it emptied is released at once.</summary>
    WasteSlice,
}
