using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The calling thread's CPU time (Linux: clock_gettime with CLOCK_THREAD_CPUTIME_ID, through the C library, whose
/// clock id and timespec are the same on x64 and ARM64; Windows: GetThreadTimes, kernel plus user time in 100 ns
/// units, advanced by the scheduler's tick), so that the background thread can
/// account for the processor time it really used, not the wall time of its wakes (which include preemption).
/// </summary>
internal static partial class ThreadCpuClock
{
    private const int CLOCK_THREAD_CPUTIME_ID = 3;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc")]
    private static partial int clock_gettime(int clock, out Timespec time);

    /// <summary>Nanoseconds of CPU the calling thread has used, or -1 where the clock is not available (neither Linux
    /// nor Windows, or the call failed): callers then count nothing.</summary>
    public static long Nanoseconds()
    {
        if (OperatingSystem.IsWindows())
            return WindowsMemory.GetThreadTimes(WindowsMemory.GetCurrentThread(), out _, out _, out long kernel, out long user)
                ? (kernel + user) * 100 : -1;
        if (!OperatingSystem.IsLinux()) return -1;
        return clock_gettime(CLOCK_THREAD_CPUTIME_ID, out Timespec t) == 0 ? t.Seconds * 1_000_000_000 + t.Nanoseconds : -1;
    }
}
