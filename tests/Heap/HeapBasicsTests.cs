using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

public class HeapBasicsTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(255)]
    [InlineData(4000)]
    [InlineData(16384)]
    [InlineData(16385)]
    [InlineData(100_000)]
    [InlineData(3 << 20)]
    public void AllocatedBlockHasItsSizeAndKeepsItsBytes(long size)
    {
        using NativeHeap heap = TestHeaps.Small();
        foreach (BlockKind kind in new[] { BlockKind.Movable, BlockKind.Unmovable })
        {
            BlockHandle h = heap.Allocate(size, kind);
            Assert.Equal(size, heap.GetSize(h));
            Assert.Equal(kind, heap.GetKind(h));
            TestHeaps.Fill(heap, h);
            Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            using (PinScope pin = heap.Pin(h)) Assert.Equal(size, pin.Span.Length);
            heap.Free(h);
        }
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void LiveBytesReturnToZeroAndEveryPageblockIsFreeAfterFreeingAll()
    {
        using NativeHeap heap = TestHeaps.Small();
        var rng = new Random(7);
        var handles = new List<BlockHandle>();
        for (int i = 0; i < 1500; i++)
            handles.Add(heap.Allocate(rng.Next(1, 3) == 1 ? rng.Next(1, 300) : rng.Next(1, 70_000), (BlockKind)rng.Next(2)));
        long expected = handles.Sum(h => heap.GetSize(h));
        Assert.Equal(expected, heap.GetStatistics().LiveBytes);
        TestHeaps.AssertValid(heap);
        foreach (BlockHandle h in handles) heap.Free(h);
        Assert.Equal(0, heap.GetStatistics().LiveBytes);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void UnmovableBlocksNeverLandInTheMovableZone()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50);
        var handles = Enumerable.Range(0, 2000).Select(i => heap.Allocate(48 + i % 5000, BlockKind.Unmovable)).ToList();
        TestHeaps.AssertValid(heap); // the validator checks the zone of every unmovable entry
        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(stats.Zones[1].Pages, stats.Zones[1].FreePages);
        handles.ForEach(heap.Free);
    }

    [Fact]
    public void StablePointerOfAnUnmovableBlockIsItsPinnedAddress()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100, BlockKind.Unmovable);
        nint p = heap.GetStablePointer(h);
        using (PinScope pin = heap.Pin(h)) Assert.Equal(p, pin.Address);
        heap.Free(h);
    }

    [Fact]
    public void StablePointerOfAMovableBlockIsRefused()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100);
        Assert.Throws<InvalidOperationException>(() => heap.GetStablePointer(h));
        heap.Free(h);
    }

    [Fact]
    public void MovableBlocksFallBackToTheNormalZoneWhenTheMovableZoneIsFull()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, arenaBytes: 8L << 20);
        var handles = new List<BlockHandle>();
        while (heap.TryAllocate(64 * 1024, BlockKind.Movable, out BlockHandle h)) handles.Add(h);
        HeapStatistics stats = heap.GetStatistics();
        Assert.True(stats.Zones[0].FreePages < stats.Zones[0].Pages / 4, "the normal zone took the overflow");
        TestHeaps.AssertValid(heap);
        handles.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ExhaustedArenaThrowsOutOfMemoryAndTryAllocateReturnsFalse()
    {
        using NativeHeap heap = TestHeaps.Small(arenaBytes: 4L << 20);
        var handles = new List<BlockHandle>();
        while (heap.TryAllocate(1000, BlockKind.Unmovable, out BlockHandle h)) handles.Add(h);
        Assert.NotEmpty(handles);
        Assert.Throws<OutOfMemoryException>(() => heap.Allocate(1000, BlockKind.Unmovable));
        TestHeaps.AssertValid(heap);
        handles.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void BlocksLargerThanTheLargestOrderTakeContiguousPageblocks()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100);
        long pageblock = 64 * 4096;
        BlockHandle h = heap.Allocate(5 * pageblock + 10);
        TestHeaps.Fill(heap, h);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
        heap.Free(h);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }

    [Fact]
    public void CommitFailureSurfacesAsAnAllocationFailure()
    {
        // Without direct compaction: it would retry the commit and succeed.
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false }, os);
        os.RefuseInArena(heap, OsCall.Protect, times: 1);
        Assert.False(heap.TryAllocate(100_000, BlockKind.Movable, out _));
        TestHeaps.AssertValid(heap);
        BlockHandle h = heap.Allocate(100_000);
        heap.Free(h);
        Assert.True(heap.Memory.CommitFailures == 1);
    }

    [Fact]
    public void ReleaseFreeMemoryDecommitsEmptiedPageblocks()
    {
        using NativeHeap heap = TestHeaps.Small();
        var handles = Enumerable.Range(0, 200).Select(_ => heap.Allocate(40_000)).ToList();
        long committed = heap.GetStatistics().CommittedBytes;
        Assert.True(committed >= 200 * 40_000);
        handles.ForEach(heap.Free);
        long released = heap.ReleaseFreeMemory();
        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(committed, released);
        Assert.Equal(0, stats.CommittedBytes);
        Assert.Equal(released, stats.DecommittedBytes);
        BlockHandle again = heap.Allocate(40_000); // recommits on demand
        TestHeaps.Fill(heap, again);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, again));
        heap.Free(again);
    }

    [Fact]
    public void ReleaseFreeMemoryPurgesFreeRunsInsidePageblocksStillInUseAndKeepsLiveBytes()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100);
        var blocks = Enumerable.Range(0, 400).Select(_ => heap.Allocate(30_000)).ToList();
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        var kept = blocks.Where((_, i) => i % 8 == 0).ToList();   // one block in eight: every pageblock stays in use
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);
        long released = heap.ReleaseFreeMemory();
        HeapStatistics stats = heap.GetStatistics();
        Assert.True(stats.PurgedBytes > 0, "free runs between live blocks were purged");
        Assert.True(released >= stats.PurgedBytes);
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        BlockHandle again = heap.Allocate(30_000);   // purged pages are still usable (they read back as zero)
        TestHeaps.Fill(heap, again);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, again));
        heap.Free(again);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void PortableBackEndServesBlocksToo()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64, ForcePortableMemory = true });
        BlockHandle h = heap.Allocate(123_456);
        TestHeaps.Fill(heap, h);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void HeapRunsWithoutPerThreadCaches()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        var handles = Enumerable.Range(1, 500).Select(i => heap.Allocate(i)).ToList();
        Assert.Equal(0, heap.GetStatistics().CachedSlots);
        TestHeaps.AssertValid(heap);
        handles.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }
}

/// <summary>A run that does not fit first drains the thread caches and frees the empty slabs kept for reuse, before
/// compacting or failing: pages no block uses never make an allocation fail.</summary>
public sealed class RunAllocationRetryTests
{
    [Fact]
    public void AnEmptyHeapServesItsLargestBlockAfterASmallBlockCameAndWent()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 4L << 20, MovableZonePercent = 100, DirectCompaction = false });
        heap.Free(heap.Allocate(64));   // leaves slots in this thread's cache and an empty slab kept for reuse
        Assert.True(heap.CachedSlots() > 0);
        Assert.True(heap.TryAllocate(heap.MaxBlockSize, BlockKind.Movable, out BlockHandle big));
        heap.Free(big);
        TestHeaps.AssertValid(heap);
    }
}
