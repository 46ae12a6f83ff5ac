using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The scheduling policy of a background thread that mutators must not feel. On Linux the calling thread is put under
/// <c>SCHED_BATCH</c>: the same nice level and the same fair share of the CPU as any thread, but when it wakes it never
/// preempts the thread running on its core (the scheduler leaves that to the tick, or runs it on an idle core). Under
/// the default policy a compactor waking from its sleep preempted a mutator on the same core, and the mutator then
/// waited in that core's run queue, often until the next tick (4 ms) moved it to the other core, idle all along.
/// Elsewhere nothing changes: Windows has no such policy, and a lower priority there would let a busy process starve
/// the thread.
/// </summary>
internal static partial class BackgroundScheduling
{
    private const int SCHED_BATCH = 3;

    [StructLayout(LayoutKind.Sequential)]
    private struct SchedParam
    {
        public int Priority;   // must be 0 for SCHED_BATCH
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sched_setscheduler(int pid, int policy, in SchedParam param);

    /// <summary>Puts the calling thread under the background policy; true when the OS took it (pid 0 names the calling
    /// thread on Linux). A refusal (a seccomp filter, say) leaves the thread as it was.</summary>
    public static bool ApplyToCurrentThread() =>
        OperatingSystem.IsLinux() && sched_setscheduler(0, SCHED_BATCH, new SchedParam()) == 0;
}
