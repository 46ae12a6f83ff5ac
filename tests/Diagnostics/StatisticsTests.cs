using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

public sealed class StatisticsTests(ITestOutputHelper output)
{
    /// <summary>A heap with a seeded mix of blocks of both kinds live, some of them freed again.</summary>
    private static (NativeHeap Heap, List<BlockHandle> Live) Churned(int movablePercent, int seed = 11)
    {
        NativeHeap heap = TestHeaps.Small(movablePercent: movablePercent);
        var rng = new Random(seed);
        var live = new List<BlockHandle>();
        for (int i = 0; i < 600; i++)
        {
            long size = rng.Next(3) == 0 ? rng.Next(17_000, 300_000) : rng.Next(1, 4000);
            // A heap that is all movable zone has no room for unmovable blocks at all (see the report).
            BlockKind kind = movablePercent == 100 ? BlockKind.Movable : (BlockKind)rng.Next(2);
            live.Add(heap.Allocate(size, kind));
        }
        foreach (BlockHandle h in live.Where((_, i) => i % 3 == 1).ToList()) { heap.Free(h); live.Remove(h); }
        return (heap, live);
    }

    private static long[] Numbers(string line, int skip) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(skip).Select(long.Parse).ToArray();

    [Theory]
    [InlineData(0, new[] { "Normal" })]
    [InlineData(50, new[] { "Normal", "Movable" })]
    [InlineData(100, new[] { "Movable" })]
    public void BuddyInfoHasALinePerZoneAndItsFreeBlocksAddUpToTheZonesFreePages(int movablePercent, string[] zones)
    {
        (NativeHeap heap, List<BlockHandle> live) = Churned(movablePercent);
        using (heap)
        {
            HeapStatistics stats = heap.GetStatistics();
            string buddyInfo = stats.BuddyInfo();
            output.WriteLine(buddyInfo);
            string[] lines = buddyInfo.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.Equal(zones, stats.Zones.Select(z => z.Name));
            Assert.Equal(zones.Length, lines.Length);
            for (int i = 0; i < zones.Length; i++)
            {
                ZoneStatistics zone = stats.Zones[i];
                Assert.StartsWith($"Zone {zones[i]} ", lines[i]);
                long[] perOrder = Numbers(lines[i], 2);
                Assert.Equal(zone.Orders, perOrder.Length);
                Assert.Equal(zone.FreePages, perOrder.Select((n, o) => n << o).Sum());
                Assert.True(zone.FreePages < zone.Pages, "the churn left something allocated in every zone");
            }
            live.ForEach(heap.Free);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(50)]
    [InlineData(100)]
    public void PageTypeInfoSplitsTheFreeBlocksOfEachZoneByMigrateType(int movablePercent)
    {
        (NativeHeap heap, List<BlockHandle> live) = Churned(movablePercent);
        using (heap)
        {
            HeapStatistics stats = heap.GetStatistics();
            string text = stats.PageTypeInfo();
            output.WriteLine(text);
            string[] lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.Equal($"Pages per block:  {stats.PageblockPages}", lines[1]);
            foreach (ZoneStatistics zone in stats.Zones)
            {
                long[] total = new long[zone.Orders];
                foreach (MigrateType type in Enum.GetValues<MigrateType>())
                {
                    string line = Assert.Single(lines, l => l.StartsWith($"Zone {zone.Name} ", StringComparison.Ordinal) && l.Contains($" type {type} "));
                    long[] perOrder = Numbers(line, 4);
                    Assert.Equal(Enumerable.Range(0, zone.Orders).Select(o => zone.FreeBlocks(o, type)), perOrder);
                    for (int o = 0; o < zone.Orders; o++) total[o] += perOrder[o];
                }
                Assert.Equal(zone.FreePages, total.Select((n, o) => n << o).Sum());
                string counts = Assert.Single(lines, l => l.StartsWith($"Zone {zone.Name} ", StringComparison.Ordinal) && !l.Contains(" type "));
                long[] pageblocks = Numbers(counts, 2);
                Assert.Equal([zone.Pageblocks(MigrateType.Unmovable), zone.Pageblocks(MigrateType.Movable)], pageblocks);
                Assert.Equal(zone.Pages / stats.PageblockPages, pageblocks.Sum());
            }
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void FreePagesOfAllZonesPlusPagesInUseAccountForTheWholeArena()
    {
        (NativeHeap heap, List<BlockHandle> live) = Churned(50);
        using (heap)
        {
            HeapStatistics stats = heap.GetStatistics();
            long used = 0;
            for (int p = 0; p < heap.Map.PageCount; p++)
                if (heap.Map.Page(p).Kind is PageKind.RunHead or PageKind.SlabHead or PageKind.Tail) used++;
            Assert.Equal(stats.ReservedBytes / stats.PageSize, stats.Zones.Sum(z => z.FreePages) + used);
            Assert.Equal(live.Sum(heap.GetSize), stats.LiveBytes);
            Assert.Equal(live.Count, stats.LiveBlocks);
            live.ForEach(heap.Free);
            Assert.Equal(stats.Zones.Sum(z => (long)z.Pages), heap.AllPageblocksFree() ? heap.GetStatistics().Zones.Sum(z => z.FreePages) : -1);
        }
    }

    [Fact]
    public void MetadataOfAOneGibibyteArenaWithFourKibibytePagesIsUnderOnePercent()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 1L << 30 });
        var handles = Enumerable.Range(0, 10_000).Select(i => heap.Allocate(16 + i % 2000, (BlockKind)(i & 1))).ToList();
        HeapStatistics stats = heap.GetStatistics();
        output.WriteLine($"metadata {stats.MetadataBytes:N0} B of {stats.ReservedBytes:N0} B = {100.0 * stats.MetadataBytes / stats.ReservedBytes:0.000}%");
        Assert.Equal(1L << 30, stats.ReservedBytes);
        Assert.Equal(4096, stats.PageSize);
        long used = stats.Zones.Sum(z => z.Pages - z.FreePages);
        Assert.True(used > 0 && stats.MetadataBytes >= used * 32, "page descriptors alone are 32 B per page in use");
        Assert.True(stats.MetadataBytes < stats.ReservedBytes / 100, $"{stats.MetadataBytes} B is 1% or more of the arena");
        handles.ForEach(heap.Free);
    }
}
