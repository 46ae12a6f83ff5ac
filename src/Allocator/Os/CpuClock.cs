namespace Compaction.Allocator.Os;

/// <summary>
/// The two CPU clocks the background compactor paces itself by: the process's (every thread) and the calling
/// thread's, in nanoseconds, each -1 where the OS has none. <see cref="System"/> reads the OS's clocks
/// (<see cref="ProcessCpuClock"/>, <see cref="ThreadCpuClock"/>); tests pass their own, whose readings they script,
/// as they pass a <see cref="TimeProvider"/> for the wall clock.
/// </summary>
internal abstract class CpuClock
{
    /// <summary>The OS's clocks.</summary>
    public static CpuClock System { get; } = new SystemCpuClock();

    /// <summary>Nanoseconds of CPU the whole process has used, or -1 where unavailable.</summary>
    public abstract long ProcessNanoseconds();

    /// <summary>Nanoseconds of CPU the calling thread has used, or -1 where unavailable.</summary>
    public abstract long ThreadNanoseconds();

    private sealed class SystemCpuClock : CpuClock
    {
        public override long ProcessNanoseconds() => ProcessCpuClock.Nanoseconds();

        public override long ThreadNanoseconds() => ThreadCpuClock.Nanoseconds();
    }
}
