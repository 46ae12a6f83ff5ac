namespace Compaction.Tests;

/// <summary>A clock that moves <paramref name="step"/> every time it is read, so that every budget check spends it:
/// for tests of slices, whose assertions are then counts, never elapsed time.</summary>
public sealed class SteppingTimeProvider(TimeSpan step) : TimeProvider
{
    private long _now;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => Interlocked.Add(ref _now, step.Ticks);
}
