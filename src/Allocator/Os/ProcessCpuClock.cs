using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The whole process's CPU time, every thread's user and kernel time added up (Linux: clock_gettime with
/// CLOCK_PROCESS_CPUTIME_ID, see <see cref="PosixClock"/>;
/// Windows: GetProcessTimes, kernel plus user time in 100 ns units, advanced by the scheduler's tick), so that the
/// background compactor can be charged for the CPU its steps make the other threads spend (the process-wide barrier,
/// waits on frozen blocks), not only its own thread's (<see cref="ThreadCpuClock"/>).
/// </summary>
internal static partial class ProcessCpuClock
{
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
        return PosixClock.Nanoseconds(PosixClock.CLOCK_PROCESS_CPUTIME_ID);
    }
}
