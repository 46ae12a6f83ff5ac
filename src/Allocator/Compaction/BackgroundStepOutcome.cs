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

/// <summary>What one background wake did (<see cref="Outcome"/>), and whether the waste-driven run's CPU share changed
/// in it: <see cref="ShareChange"/> +1 when a cycle that gave back little halved it, -1 when grown waste restored it,
/// 0 otherwise; <see cref="ShareDivisor"/> is what the share is divided by now (1, 2, 4 or 8).</summary>
internal readonly record struct BackgroundStepResult(BackgroundStepOutcome Outcome, int ShareChange = 0, int ShareDivisor = 1);
