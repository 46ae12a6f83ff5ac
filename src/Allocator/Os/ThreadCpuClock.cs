namespace Compaction.Allocator.Os;

/// <summary>
/// The calling thread's CPU time (Linux: clock_gettime with CLOCK_THREAD_CPUTIME_ID, see <see cref="PosixClock"/>;
/// Windows: GetThreadTimes, kernel plus user time in 100 ns units, advanced by the scheduler's tick), so that the
/// background thread can account for the processor time it really used, not the wall time of its wakes (which include preemption).
/// </summary>
internal static class ThreadCpuClock
{
    /// <summary>Nanoseconds of CPU the calling thread has used, or -1 where the clock is not available (neither Linux
    /// nor Windows, or the call failed): callers then count nothing.</summary>
    public static long Nanoseconds()
    {
        if (OperatingSystem.IsWindows())
            return WindowsMemory.GetThreadTimes(WindowsMemory.GetCurrentThread(), out _, out _, out long kernel, out long user)
                ? (kernel + user) * 100 : -1;
        if (!OperatingSystem.IsLinux()) return -1;
        return PosixClock.Nanoseconds(PosixClock.CLOCK_THREAD_CPUTIME_ID);
    }
}
