using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>clock_gettime through the C library, whose clock ids and timespec are the same on x64 and ARM64 Linux: the
/// Linux side of <see cref="ThreadCpuClock"/> and <see cref="ProcessCpuClock"/>.</summary>
internal static partial class PosixClock
{
    public const int CLOCK_PROCESS_CPUTIME_ID = 2;
    public const int CLOCK_THREAD_CPUTIME_ID = 3;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc")]
    private static partial int clock_gettime(int clock, out Timespec time);

    /// <summary>The clock's reading in nanoseconds, or -1 when the call failed.</summary>
    public static long Nanoseconds(int clock) =>
        clock_gettime(clock, out Timespec t) == 0 ? t.Seconds * 1_000_000_000 + t.Nanoseconds : -1;
}
