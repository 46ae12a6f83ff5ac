using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>
/// The background thread runs on the heap's <see cref="HeapOptions.TimeProvider"/>: with a manual provider it wakes
/// exactly when the test advances time past its interval, and free memory is decommitted exactly when the provider's
/// time has passed the decommit delay. No assertion depends on the wall clock (the only real-time waits bound how long
/// a test waits for the thread to finish a wake it was told to run).
/// </summary>
public sealed class ManualClockBackgroundTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);   // a hang guard, not a measurement

    private static NativeHeap Heap(ManualTimeProvider clock) => new(new HeapOptions
    {
        ArenaBytes = 64L << 20,
        PageblockPages = 64,
        TimeProvider = clock,
        CompactionInterval = TimeSpan.FromMilliseconds(1),   // with the system clock: a thousand wakes a second
        DecommitDelay = TimeSpan.FromSeconds(10),
        Proactiveness = 0,
        WasteHighRatio = 0,
    });

    /// <summary>Waits until the background thread has armed its timer <paramref name="arms"/> times: it is asleep
    /// again, so every wake before has finished.</summary>
    private static void WaitUntilAsleep(ManualTimeProvider clock, int arms) =>
        Assert.True(SpinWait.SpinUntil(() => clock.Arms >= arms, Patience), $"the background thread did not go back to sleep ({clock.Arms} of {arms} arms)");

    [Fact]
    public void TheBackgroundThreadWakesOnlyWhenTheProvidersTimePassesItsInterval()
    {
        var clock = new ManualTimeProvider();
        using NativeHeap heap = Heap(clock);
        heap.StartBackgroundCompaction();
        WaitUntilAsleep(clock, 1);
        Thread.Sleep(50);   // real time passes (fifty intervals of the system clock); the provider's does not
        Assert.Equal(0, heap.GetStatistics().Compaction.CompactDaemonWake);

        for (int wake = 1; wake <= 3; wake++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(1));
            WaitUntilAsleep(clock, wake + 1);
            Assert.Equal(wake, heap.GetStatistics().Compaction.CompactDaemonWake);
        }
        heap.StopBackgroundCompaction();
        Assert.False(heap.BackgroundCompactionRunning);
    }

    [Fact]
    public void FreePageblocksAreDecommittedWhenTheProvidersTimePassesTheDecommitDelay()
    {
        var clock = new ManualTimeProvider();
        using NativeHeap heap = Heap(clock);
        var blocks = new List<BlockHandle>();
        for (int i = 0; i < 64; i++) blocks.Add(heap.Allocate(64 * 1024));
        blocks.ForEach(heap.Free);
        long committed = heap.GetStatistics().CommittedBytes;
        Assert.True(committed > 0);

        heap.StartBackgroundCompaction();
        WaitUntilAsleep(clock, 1);
        clock.Advance(TimeSpan.FromMilliseconds(1));   // wake 1 at 1 ms: the free pageblocks' free-since time is taken
        WaitUntilAsleep(clock, 2);
        clock.Advance(TimeSpan.FromSeconds(9));        // wake 2 at 9.001 s: free for 9 s, under the delay
        WaitUntilAsleep(clock, 3);
        HeapStatistics early = heap.GetStatistics();
        Assert.Equal(2, early.Compaction.CompactDaemonWake);
        Assert.Equal(0, early.Compaction.BytesDecommitted);
        Assert.Equal(committed, early.CommittedBytes);

        clock.Advance(TimeSpan.FromSeconds(1));        // wake 3 at 10.001 s: free for 10 s, the delay
        WaitUntilAsleep(clock, 4);
        HeapStatistics after = heap.GetStatistics();
        Assert.Equal(3, after.Compaction.CompactDaemonWake);
        Assert.True(after.Compaction.BytesDecommitted > 0, "nothing decommitted once the delay had passed");
        Assert.True(after.CommittedBytes < committed);
    }

    [Fact]
    public void TheDefaultTimeProviderIsTheSystemClock() =>
        Assert.Same(TimeProvider.System, new HeapOptions().TimeProvider);

    [Fact]
    public void ANullTimeProviderIsRefusedNamingTheOption()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { TimeProvider = null! }));
        Assert.Equal(nameof(HeapOptions.TimeProvider), e.ParamName);
    }
}
