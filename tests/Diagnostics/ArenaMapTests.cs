using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>The picture of the arena (<see cref="ArenaMap"/>) on a small arena of known layout: 64-page pageblocks,
/// the normal zone first.</summary>
public sealed class ArenaMapTests
{
    [Fact]
    public void CellsShowTypeOccupancyCommitAndPins()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, caches: false);
        BlockHandle full = heap.Allocate(64 * 4096, BlockKind.Unmovable);   // one whole normal pageblock
        BlockHandle half = heap.Allocate(32 * 4096);                         // half of a movable pageblock
        BlockPin pin = heap.AcquirePin(half);
        ArenaMap map = heap.GetArenaMap("before");
        PageblockView normal0 = map.Pageblocks.First(p => p.Zone == "Normal");
        PageblockView normal1 = map.Pageblocks.Where(p => p.Zone == "Normal").Skip(1).First();
        PageblockView movable0 = map.Pageblocks.First(p => p.Zone == "Movable");
        Assert.Equal(MigrateType.Unmovable, normal0.Type);
        Assert.Equal(1.0, normal0.Occupancy);
        Assert.Equal("#ff7f0e", ArenaMap.FillOf(normal0));                 // unmovable, full
        Assert.False(normal1.Committed);
        Assert.Equal("#d9d9d9", ArenaMap.FillOf(normal1));                 // no memory behind it
        Assert.Equal(MigrateType.Movable, movable0.Type);
        Assert.Equal(0.5, movable0.Occupancy);
        Assert.Equal(32, movable0.PinnedPages);
        Assert.Equal("#8fbbda", ArenaMap.FillOf(movable0));                // half-way from white to blue
        Assert.Equal(0, normal0.PinnedPages);

        pin.Dispose();
        heap.Free(half);
        ArenaMap after = heap.GetArenaMap("after");
        string svg = ArenaMap.Svg(map, after);
        Assert.Contains(">before</text>", svg);
        Assert.Contains(">after</text>", svg);
        Assert.Contains($"data-pb=\"{movable0.Index}\" x=\"", svg);
        // The pinned cell has the red frame in the first panel; in the second the block is gone and the cell is free.
        string[] cells = svg.Split('\n').Where(l => l.Contains($"data-pb=\"{movable0.Index}\"")).ToArray();
        Assert.Equal(2, cells.Length);
        Assert.Contains("stroke=\"#d62728\"", cells[0]);
        Assert.Contains("fill=\"#ffffff\"", cells[1]);
        Assert.Equal(map.Pageblocks.Count + after.Pageblocks.Count, svg.Split('\n').Count(l => l.Contains("class=\"pb\"")));
        heap.Free(full);
    }

    [Fact]
    public void APinnedUnmovableBlockHasItsOwnFrameAndThePageZoomShowsEachPage()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, caches: false);
        BlockHandle run = heap.Allocate(32 * 4096);                          // movable, half a pageblock
        BlockPin longTerm = heap.PinLongTerm(heap.Allocate(20 * 4096));      // moved into unmovable memory
        BlockPin atomic = heap.AcquirePin(run);
        ArenaMap map = heap.GetArenaMap();
        PageblockView movable = map.Pageblocks.First(p => p.Zone == "Movable" && p.PinnedPages > 0);
        PageblockView unmovable = map.Pageblocks.First(p => p.PinnedUnmovablePages > 0);
        Assert.Equal(32, movable.PinnedPages);
        Assert.Equal(20, unmovable.PinnedUnmovablePages);
        Assert.Equal(MigrateType.Unmovable, unmovable.Type);
        string svg = ArenaMap.Svg(map);
        Assert.Contains("stroke=\"#9467bd\"", svg.Split('\n').First(l => l.Contains($"data-pb=\"{unmovable.Index}\"")));

        IReadOnlyList<PageView> pages = heap.GetPageMap(movable.Index, 1);
        Assert.Equal(64, pages.Count);
        Assert.All(pages.Take(32), p => Assert.True(p.Kind == "run" && p.Pinned && p.MovableBlock));
        Assert.All(pages.Skip(32), p => Assert.Equal("free", p.Kind));
        string zoom = ArenaMap.PageSvg(pages, 32, "one pageblock, page by page");
        Assert.Equal(64, zoom.Split('\n').Count(l => l.Contains("class=\"page\"")));
        Assert.Equal(32, zoom.Split('\n').Count(l => l.Contains("class=\"page\"") && l.Contains("stroke=\"#d62728\"")));
        Assert.Throws<ArgumentOutOfRangeException>(() => heap.GetPageMap(-1, 1));
        atomic.Dispose();
        longTerm.Dispose();
        heap.Free(run);
    }
}
