using System.Text.RegularExpressions;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>The kernel's text reports (<see cref="HeapReports"/>) on a small arena of known layout: 64-page
/// pageblocks, max order 7, 64 max-order blocks per zone.</summary>
public sealed class HeapReportsTests
{
    [Fact]
    public void BuddyinfoAndPagetypeinfoAreTheKernelsFormatsWithTheRightCounts()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, caches: false);
        BlockHandle h = heap.Allocate(8 * 4096);   // an 8-page run (above the slab threshold): the movable zone's first max-order block split down to order 3
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(
            "Node 0, zone   Normal      0      0      0      0      0      0      0     64 \n" +
            "Node 0, zone  Movable      0      0      0      1      1      1      1     63 \n",
            HeapReports.BuddyInfo(s));
        string pti = HeapReports.PagetypeInfo(s);
        Assert.StartsWith("Page block order: 6\nPages per block:  64\n\nFree pages count per migrate type at order       0      1      2", pti);
        Assert.Contains("Node    0, zone  Movable, type      Movable      0      0      0      1      1      1      1     63 \n", pti);
        Assert.Contains("Node    0, zone   Normal, type    Unmovable      0      0      0      0      0      0      0     64 \n", pti);
        Assert.Contains("Number of blocks type     Unmovable      Movable \n", pti);
        Assert.Contains("Node 0, zone  Movable            0          128 \n", pti);
        Assert.Contains("Node 0, zone   Normal          128            0 \n", pti);
        Assert.Equal(
            "Node 0, zone   Normal -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 \n" +
            "Node 0, zone  Movable -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 -1.000 \n",
            HeapReports.ExtfragIndex(s));
        Assert.Matches(@"^Node 0, zone  Movable (0\.\d{3} ){8}$", HeapReports.UnusableIndex(s).Split('\n')[1]);
        heap.Free(h);
    }

    [Fact]
    public void AFragmentedZoneShowsItsIndicesAsTheKernelComputesThem()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, caches: false);
        var runs = new List<BlockHandle>();
        while (heap.TryAllocate(5 * 4096, BlockKind.Movable, out BlockHandle r)) runs.Add(r);   // 5-page runs until the arena is full
        for (int i = 0; i < runs.Count; i += 2) heap.Free(runs[i]);                              // every other run free
        HeapStatistics s = heap.GetStatistics();
        ZoneStatistics movable = s.Zones.First(z => z.Name == "Movable");
        string extfrag = HeapReports.ExtfragIndex(s).Split('\n')[1];
        string unusable = HeapReports.UnusableIndex(s).Split('\n')[1];
        Assert.Matches(@"^Node 0, zone  Movable ((-| )?\d\.\d{3} ){8}$", extfrag);
        string[] e = extfrag.Split(' ', StringSplitOptions.RemoveEmptyEntries)[4..];
        string[] u = unusable.Split(' ', StringSplitOptions.RemoveEmptyEntries)[4..];
        long[] free = movable.FreeBlocksPerOrder();
        for (int o = 0; o < movable.Orders; o++)
        {
            Assert.Equal(Fragmentation.FragmentationIndex(free, o) / 1000.0, double.Parse(e[o], System.Globalization.CultureInfo.InvariantCulture), 3);
            Assert.Equal(Fragmentation.UnusableFreeIndex(free, o) / 1000.0, double.Parse(u[o], System.Globalization.CultureInfo.InvariantCulture), 3);
        }
        Assert.Equal("-1.000", e[0]);                 // single pages are free
        Assert.NotEqual("-1.000", e[3]);              // but no 8 free pages in a row: order 3 fails for fragmentation
        for (int i = 1; i < runs.Count; i += 2) heap.Free(runs[i]);
    }
}
