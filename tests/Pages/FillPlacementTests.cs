using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>
/// Where a growing heap puts its pages: a fill of assorted sizes leaves no free pages behind its next-fit region
/// (native-layout.md, section 1, "Next fit inside a pageblock"), and a run that crosses into the next pageblock is an
/// ordinary run to the compactor.
/// </summary>
public sealed unsafe class FillPlacementTests
{
    private static int LogUniformSize(Random rnd, int max) => (int)Math.Exp(Math.Log(16) + rnd.NextDouble() * (Math.Log(max) - Math.Log(16)));

    /// <summary>Free pages in blocks smaller than a pageblock: holes inside committed pageblocks.</summary>
    private static long HolePages(NativeHeap heap)
    {
        int pageblockOrder = System.Numerics.BitOperations.Log2((uint)heap.Options.PageblockPages);
        long pages = 0;
        foreach (ZoneStatistics zone in heap.GetStatistics().Zones)
        {
            long[] free = zone.FreeBlocksPerOrder();
            for (int o = 0; o < pageblockOrder; o++) pages += free[o] << o;
        }
        return pages;
    }

    [Fact]
    public void AGrowingFillOfAssortedSizesLeavesNoFreePagesBehindItsRegion()
    {
        // The defaults: 512-page pageblocks, thread caches on, the soft limit on (met every few pageblocks the fill
        // commits: it must not drain the caches, whose slabs would go back to the buddy allocator as holes).
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 1L << 30 });
        var rnd = new Random(5);
        long bytes = 0;
        var blocks = new List<BlockHandle>();
        while (bytes < 96L << 20)
        {
            int size = LogUniformSize(rnd, 256 * 1024);
            blocks.Add(heap.Allocate(size));
            bytes += size;
        }
        // What is left of the region's pageblock, and the tails of the few runs that filled holes; before the
        // placement rules, 1,275 pages here (5% of the committed pages).
        long holes = HolePages(heap);
        Assert.True(holes <= heap.Options.PageblockPages, $"{holes} free pages in holes after a {bytes >> 20} MiB fill");
        TestHeaps.AssertValid(heap);
        blocks.ForEach(heap.Free);
    }

    [Fact]
    public void RunsThatCrossAPageblockMoveLikeAnyOtherAndKeepTheirBytes()
    {
        using var heap = TestHeaps.Small(caches: false);   // 64-page pageblocks
        int pageSize = heap.Options.PageSize;
        // 24-page runs (below the pageblock's order): every run that does not fit what is left of a pageblock crosses.
        List<BlockHandle> runs = Enumerable.Range(0, 36).Select(_ => heap.Allocate(24L * pageSize - 100)).ToList();
        runs.ForEach(h => TestHeaps.Fill(heap, h));
        int PageblockOf(nint address) => heap.Map.PageblockOf(heap.Map.PageOf(address));
        int Crossing()
        {
            int n = 0;
            foreach (BlockHandle h in runs)
            {
                using PinScope pin = heap.Pin(h);
                nint first = (nint)pin.Pointer;
                if (PageblockOf(first) != PageblockOf(first + pin.Span.Length - 1)) n++;
            }
            return n;
        }
        Assert.True(Crossing() >= runs.Count / 4, "a run in three crosses a pageblock boundary");
        TestHeaps.AssertValid(heap);

        for (int i = 0; i < runs.Count; i += 2) heap.Free(runs[i]);
        runs = runs.Where((_, i) => i % 2 == 1).ToList();
        CompactionStatistics moved = heap.Compact();
        Assert.True(moved.PgmigrateSuccess > 0, "compaction moved runs");
        Assert.All(runs, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        TestHeaps.AssertValid(heap);
        runs.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }
}
