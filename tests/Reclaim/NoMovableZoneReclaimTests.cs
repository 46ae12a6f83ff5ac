using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>A heap without a movable zone (MovableZonePercent = 0) compacts nothing, but gives free memory back by
/// itself like any other: its background thread and <see cref="NativeHeap.RunCompactionStep"/> run decommit and decay,
/// and its statistics report what they did.</summary>
public sealed class NoMovableZoneReclaimTests
{
    private static NativeHeap Heap() => new(new HeapOptions
    {
        ArenaBytes = 32L << 20, PageblockPages = 64, MovableZonePercent = 0, DecommitDelay = TimeSpan.FromSeconds(10),
    });

    [Fact]
    public void AHandDrivenStepDecommitsFreePageblocksAfterTheDelayAndCountsIt()
    {
        using NativeHeap heap = Heap();
        var blocks = new List<BlockHandle>();
        for (int i = 0; i < 64; i++) blocks.Add(heap.Allocate(64 * 1024, BlockKind.Unmovable));
        blocks.ForEach(heap.Free);
        heap.RunCompactionStep(TimeSpan.FromSeconds(1));   // the pageblocks' free-since time is taken
        long committed = heap.GetStatistics().CommittedBytes;
        Assert.True(committed > 0);
        CompactionStatistics early = heap.RunCompactionStep(TimeSpan.FromSeconds(5));
        Assert.Equal(0, early.BytesDecommitted);
        CompactionStatistics step = heap.RunCompactionStep(TimeSpan.FromSeconds(30));
        Assert.True(step.BytesDecommitted > 0, "no decommit after the delay");
        HeapStatistics s = heap.GetStatistics();
        Assert.True(s.CommittedBytes < committed);
        Assert.Equal(step.BytesDecommitted, s.Compaction.BytesDecommitted);
    }

    [Fact]
    public void TheBackgroundThreadRunsWithoutAMovableZone()
    {
        using NativeHeap heap = Heap();
        heap.StartBackgroundCompaction();
        Assert.True(heap.BackgroundCompactionRunning);
        heap.StopBackgroundCompaction();
        Assert.False(heap.BackgroundCompactionRunning);
    }
}
