namespace Compaction.Allocator.Compaction;

/// <summary>
/// What the compactor needs of the heap's options (the same names; the API validated them and builds this once):
/// the proactive trigger (<see cref="Proactiveness"/>, and a pass's budget in bytes and time), the waste trigger
/// (<see cref="WasteHighRatio"/> down to <see cref="WasteLowRatio"/>, at least <see cref="WasteMinBytes"/> at stake,
/// or above <see cref="RetainedBytesLimit"/>) and its slices, and whether the per-thread caches stay on while blocks
/// move. <see cref="Clock"/> is the heap's one wall clock (<c>HeapOptions.TimeProvider</c>): every budget and slice is
/// measured in its timestamps, so a test's provider drives them.
/// </summary>
internal sealed record CompactionSettings(
    int Proactiveness,
    long CompactionBudgetBytes,
    TimeSpan CompactionBudgetTime,
    TimeSpan CompactionSliceTime,
    double WasteHighRatio,
    double WasteLowRatio,
    long WasteMinBytes,
    long RetainedBytesLimit,
    bool ThreadCachesDuringMigration,
    TimeProvider Clock)
{
    /// <summary><paramref name="time"/> in <see cref="Clock"/>'s timestamps, at least one (a budget never zero).</summary>
    public long Ticks(TimeSpan time) => Math.Max(1, (long)(time.TotalSeconds * Clock.TimestampFrequency));

    /// <summary>One slice of background work (<see cref="CompactionSliceTime"/>) in <see cref="Clock"/>'s timestamps.</summary>
    public long SliceTicks => Ticks(CompactionSliceTime);
}
