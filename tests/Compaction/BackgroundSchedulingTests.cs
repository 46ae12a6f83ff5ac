using Compaction.Allocator;
using Compaction.Allocator.Os;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The background compactor's thread runs under <c>SCHED_BATCH</c> on Linux (<see cref="HeapOptions.BackgroundBatchScheduling"/>),
/// so that its wakes never preempt a mutator on their core; the policy is read back from the kernel
/// (<c>/proc/thread-self/stat</c>, field 41), not taken on trust.
/// </summary>
public sealed class BackgroundSchedulingTests(ITestOutputHelper output)
{
    private const int SchedOther = 0, SchedBatch = 3;

    /// <summary>The scheduling policy of the calling thread, from its stat line (the fields after the command name,
    /// which may hold spaces, start after the last ')').</summary>
    private static int PolicyOfThisThread()
    {
        string stat = File.ReadAllText("/proc/thread-self/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[41 - 3], System.Globalization.CultureInfo.InvariantCulture);   // field 3 is fields[0]
    }

    [Fact]
    public void ApplyingThePolicyPutsTheCallingThreadUnderSchedBatchAndNoOtherThread()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.False(BackgroundScheduling.ApplyToCurrentThread());
            output.WriteLine("skipped: SCHED_BATCH is Linux's; elsewhere the call does nothing and says so");
            return;
        }
        int policy = -1, after = -1;
        bool applied = false;
        var t = new Thread(() =>
        {
            policy = PolicyOfThisThread();
            applied = BackgroundScheduling.ApplyToCurrentThread();
            after = PolicyOfThisThread();
        });
        t.Start();
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        output.WriteLine($"policy before {policy}, applied {applied}, after {after}; this thread {PolicyOfThisThread()}");
        Assert.Equal(SchedOther, policy);
        Assert.True(applied);
        Assert.Equal(SchedBatch, after);
        Assert.Equal(SchedOther, PolicyOfThisThread());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TheBackgroundThreadTakesThePolicyOnlyWhenTheOptionIsOn(bool batch)
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 16L << 20, CompactionInterval = TimeSpan.FromMilliseconds(1), BackgroundBatchScheduling = batch,
        });
        heap.StartBackgroundCompaction();
        int expected = !batch ? 0 : OperatingSystem.IsLinux() ? 1 : -1;
        // The thread records the outcome as it starts; wait for it (bounded), then stop it.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (batch && heap.Daemon.BatchScheduled == 0 && DateTime.UtcNow < deadline) Thread.Sleep(1);
        heap.StopBackgroundCompaction();
        output.WriteLine($"option {batch}: recorded {heap.Daemon.BatchScheduled}");
        Assert.Equal(expected, heap.Daemon.BatchScheduled);
    }
}
