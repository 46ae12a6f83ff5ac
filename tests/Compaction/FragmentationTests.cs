using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>The kernel's formulas (mm/vmstat.c, mm/compaction.c) against hand-built free lists.</summary>
public class FragmentationTests
{
    // free blocks per order 0..4: 8 x order 0, 4 x order 1, 2 x order 2, none above.
    private static readonly long[] Scattered = [8, 4, 2, 0, 0];

    [Fact]
    public void ContigPageInfoCountsPagesBlocksAndSuitableBlocksInUnitsOfTheOrder()
    {
        (long pages, long total, long suitable) = Fragmentation.ContigPageInfo(Scattered, 1);
        Assert.Equal(8 + 8 + 8, pages);
        Assert.Equal(14, total);
        Assert.Equal(4 + 2 * 2, suitable);
    }

    [Fact]
    public void FragmentationIndexIsMinus1000WhenASuitableBlockExists()
        => Assert.Equal(-1000, Fragmentation.FragmentationIndex(Scattered, 2));

    [Fact]
    public void FragmentationIndexIsZeroWhenNothingIsFree()
        => Assert.Equal(0, Fragmentation.FragmentationIndex(new long[5], 3));

    [Fact]
    public void FragmentationIndexFollowsTheKernelFormulaWhenNoBlockIsSuitable()
    {
        // 1000 - (1000 + 24 * 1000 / 8) / 14 = 1000 - 4000 / 14 = 1000 - 285 = 715
        Assert.Equal(715, Fragmentation.FragmentationIndex(Scattered, 3));
        // Many tiny blocks: the failure is all fragmentation. 1000 - (1000 + 64000 / 16) / 64 = 922
        Assert.Equal(922, Fragmentation.FragmentationIndex([64, 0, 0, 0, 0], 4));
    }

    [Fact]
    public void UnusableFreeIndexIsTheShareOfFreePagesTooSmallForTheOrder()
    {
        Assert.Equal(0, Fragmentation.UnusableFreeIndex(Scattered, 0));
        Assert.Equal(333, Fragmentation.UnusableFreeIndex(Scattered, 1));   // 8 of 24 pages are order-0
        Assert.Equal(666, Fragmentation.UnusableFreeIndex(Scattered, 2));   // 16 of 24
        Assert.Equal(1000, Fragmentation.UnusableFreeIndex(Scattered, 3));
        Assert.Equal(1000, Fragmentation.UnusableFreeIndex(new long[5], 0));
    }

    [Fact]
    public void ExtfragIsTheUnusableShareInPercent()
    {
        Assert.Equal(66, Fragmentation.ExtfragForOrder(Scattered, 2));
        Assert.Equal(0, Fragmentation.ExtfragForOrder(new long[5], 2));
        Assert.Equal(0, Fragmentation.ExtfragForOrder([0, 0, 0, 3, 1], 3));
    }

    [Theory]
    [InlineData(20, 80, 90)]
    [InlineData(0, 100, 100)]
    [InlineData(50, 50, 60)]
    [InlineData(90, 10, 15)]
    [InlineData(100, 5, 7)]
    public void ProactiveWatermarksFollowProactiveness(int proactiveness, int low, int high)
        => Assert.Equal((low, high), Fragmentation.Watermarks(proactiveness));

    [Fact]
    public void ZoneStatisticsReportTheIndicesOfTheirFreeLists()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100);
        ZoneStatistics zone = heap.GetStatistics().Zones.Single();
        int pbOrder = 6;
        Assert.Equal(-1000, zone.FragmentationIndex(pbOrder));       // a fresh zone is all max-order blocks
        Assert.Equal(0, zone.UnusableFreeIndex(pbOrder));
        Assert.Equal(0, zone.ExtfragScore(pbOrder));
    }

    [Fact]
    public void TheFragmentationTableHasTheUnusableAndExtfragIndicesOfEveryOrder()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false);
        // Runs of 5 pages, every other one freed: the small holes make the indices of the higher orders non-trivial.
        var pages = Enumerable.Range(0, 2000).Select(_ => heap.Allocate(20_000)).ToList();
        for (int i = 0; i < pages.Count; i += 2) heap.Free(pages[i]);
        ZoneStatistics zone = heap.GetStatistics().Zones.Single();
        string[] lines = zone.FragmentationTable().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("Zone Movable  unusable", lines[0]);
        Assert.StartsWith("Zone Movable  extfrag_index", lines[1]);
        string[] unusable = lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries)[3..];
        string[] extfrag = lines[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[3..];
        Assert.Equal(Enumerable.Range(0, zone.Orders).Select(o => $"{zone.UnusableFreeIndex(o) / 1000.0:0.000}"), unusable);
        Assert.Equal(Enumerable.Range(0, zone.Orders).Select(o => $"{zone.FragmentationIndex(o) / 1000.0:0.000}"), extfrag);
        Assert.Contains(unusable, v => v != $"{0:0.000}" && v != $"{1:0.000}");   // the holes show: neither all free nor none
        pages.Where((_, i) => i % 2 == 1).ToList().ForEach(heap.Free);
    }
}
