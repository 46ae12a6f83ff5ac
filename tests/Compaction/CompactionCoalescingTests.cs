using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>
/// Zone compaction coalesces free space fragmented into holes smaller than the largest slab: the migrate scanner
/// leaves a slab that no free range of its size can take where it is and goes on moving the smaller units behind it
/// into the holes at the top, so the holes at the bottom merge into high-order blocks (native-layout.md, section 9,
/// "Units without a target"). Behaviour and counts only.
/// </summary>
public sealed class CompactionCoalescingTests
{
    private const int PageblockPages = 64;
    private const int LargeSize = 4096;   // 15 slots of a 16-page slab
    private const int SmallSize = 576;    // 7 slots of a 1-page slab

    [Fact]
    public void CompactionMovesSmallSlabsPastALargeOneWithoutATargetAndFreesOrderFourBlocks()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 75, caches: false, pageblockPages: PageblockPages);
        // A 16-page slab class (the large unit at the bottom) and a 1-page one (the small units).
        // Layout, bottom up: one full 16-page slab, then 1-page slabs up to the end of the eighth pageblock.
        var kept = new List<BlockHandle> { heap.Allocate(LargeSize) };
        SlabClassStatistics large = ClassOf(heap, LargeSize);
        Assert.Equal(16, large.PagesPerSlab);
        for (int i = 1; i < large.SlotsPerSlab; i++) kept.Add(heap.Allocate(LargeSize));
        BlockHandle first = heap.Allocate(SmallSize);
        SlabClassStatistics small = ClassOf(heap, SmallSize);
        Assert.Equal(1, small.PagesPerSlab);
        int smallSlabs = 8 * PageblockPages - 16;
        var slabs = new List<List<BlockHandle>>();
        for (int s = 0; s < smallSlabs; s++)
        {
            var blocks = s == 0 ? new List<BlockHandle> { first } : [];
            while (blocks.Count < small.SlotsPerSlab) blocks.Add(heap.Allocate(SmallSize));
            slabs.Add(blocks);
        }
        // Every other 1-page slab emptied: the free memory is 1-page holes between full slabs, no free range of the
        // 16-page slab's size anywhere in the used range.
        for (int s = 0; s < smallSlabs; s++)
        {
            if (s % 2 == 0) slabs[s].ForEach(heap.Free);
            else kept.AddRange(slabs[s]);
        }
        foreach (BlockHandle h in kept) TestHeaps.Fill(heap, h);
        HeapStatistics before = heap.GetStatistics();
        Assert.Equal(smallSlabs / 2 + 1, before.SlabClasses.Single(c => c.Kind == BlockKind.Movable && c.SlotSize == SmallSize).Slabs); // + the one kept empty

        CompactionStatistics run = heap.Compact();

        HeapStatistics after = heap.GetStatistics();
        // The 16-page slab had no target and stayed; the 1-page slabs behind it moved up into the holes...
        Assert.True(run.BytesMoved > 0, "the compaction moved nothing");
        Assert.True(run.PgmigrateSuccess >= PageblockPages / 2, $"only {run.PgmigrateSuccess} pages migrated");
        // ... so that the holes at the bottom merged: at least one more free block of order 4 or more (16 pages).
        long gained = HighOrderFreePages(after.Zones[1]) - HighOrderFreePages(before.Zones[1]);
        Assert.True(gained >= 16, $"free pages in blocks of order 4 or more grew by {gained}\n{before.BuddyInfo()}{after.BuddyInfo()}");
        // Destinations came from committed memory: nothing was committed.
        Assert.True(after.CommittedBytes <= before.CommittedBytes, $"committed {before.CommittedBytes} -> {after.CommittedBytes}");
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    private static SlabClassStatistics ClassOf(NativeHeap heap, int size) =>
        heap.GetStatistics().SlabClasses.Single(c => c.Kind == BlockKind.Movable && c.SlotSize == size);

    /// <summary>Free pages in blocks of order 4 and up (of either migrate type).</summary>
    private static long HighOrderFreePages(ZoneStatistics zone)
    {
        long[] free = zone.FreeBlocksPerOrder();
        long pages = 0;
        for (int o = 4; o < free.Length; o++) pages += free[o] << o;
        return pages;
    }
}
