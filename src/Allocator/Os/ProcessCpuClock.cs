using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The whole process's CPU time, every thread's user and kernel time added up (Linux: clock_gettime with
/// CLOCK_PROCESS_CPUTIME_ID, through the C library, whose clock id and timespec are the same on x64 and ARM64;
/// Windows: GetProcessTimes, kernel plus user time in 100 ns units, advanced by the scheduler's tick), so that the
/// background compactor can be charged for the CPU its steps make the other threads spend (the process-wide barrier,
/// waits on frozen blocks), not only its own thread's (<see cref="ThreadCpuClock"/>).
/// </summary>
internal static partial class ProcessCpuClock
{
    private const int CLOCK_PROCESS_CPUTIME_ID = 2;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc")]
    private static partial int clock_gettime(int clock, out Timespec time);

    [LibraryImport("kernel32")]
    private static partial nint GetCurrentProcess();

    [LibraryImport("kernel32")]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool GetProcessTimes(nint process, out long creation, out long exit, out long kernel, out long user);

    /// <summary>Nanoseconds of CPU the whole process has used, or -1 where the clock is not available (neither Linux
    /// nor Windows, or the call failed): callers then fall back to the thread's own clock.</summary>
    public static long Nanoseconds()
    {
        if (OperatingSystem.IsWindows())
            return GetProcessTimes(GetCurrentProcess(), out _, out _, out long kernel, out long user) ? (kernel + user) * 100 : -1;
        if (!OperatingSystem.IsLinux()) return -1;
        return clock_gettime(CLOCK_PROCESS_CPUTIME_ID, out Timespec t) == 0 ? t.Seconds * 1_000_000_000 + t.Nanoseconds : -1;
    }
}
