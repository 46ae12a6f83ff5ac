using Compaction.Allocator;
using Compaction.Allocator.Os;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The buddy allocator of one zone, driven directly: a <see cref="Zone"/> over a <see cref="PageMap"/> of a small
/// <see cref="ArenaMemory"/>, with pageblocks of 16 pages (pageblock order 4, max order 5: 32-page blocks).
/// </summary>
public sealed class BuddyZoneTests(ITestOutputHelper output)
{
    private const int PageSize = 4096;
    private const int PageblockPages = 16;
    private const int MaxOrder = 5;

    /// <summary>A zone of <paramref name="maxOrderBlocks"/> max-order blocks whose pageblocks start as <paramref name="type"/>.</summary>
    private sealed class TestZone : IDisposable
    {
        public readonly ArenaMemory Memory;
        public readonly PageMap Map;
        public readonly Zone Zone;

        public TestZone(int maxOrderBlocks, MigrateType type)
        {
            int pages = maxOrderBlocks << MaxOrder;
            Memory = new ArenaMemory((nuint)pages * PageSize, PageblockPages * PageSize, hugePages: false, forcePortable: false, LinuxOsMemory.Instance);
            Map = new PageMap(Memory.Base, PageSize, PageblockPages, pages, LinuxOsMemory.Instance);
            Zone = new Zone(ZoneKind.Movable, 0, pages, Map, Memory, type);
        }

        /// <summary>Allocates a run and writes its descriptors as the heap does (InitRun): the head and tails are what
        /// the pageblock-claiming rule counts as compatible pages.</summary>
        public int Allocate(int count, MigrateType type, bool mayCrossPageblock = false)
        {
            lock (Zone.Lock)
            {
                int start = Zone.AllocatePagesLocked(count, type, mayCrossPageblock);
                if (start < 0) return start;
                Map.Page(start).InitRunHead(0, count);
                for (int p = start + 1; p < start + count; p++) Map.Page(p).InitTail(start);
                return start;
            }
        }

        public void Free(int start, int count) => Zone.FreePageRange(start, count);

        public long Free(int order, MigrateType type)
        {
            lock (Zone.Lock) return Zone.FreeBlocks(order, type);
        }

        public void AssertValid()
        {
            lock (Zone.Lock) Assert.Null(Zone.ValidateLocked());
        }

        public void Dispose()
        {
            Map.Dispose();
            Memory.Dispose();
        }
    }

    [Fact]
    public void OnePageSplitsAMaxOrderBlockDownAndFreeingItMergesBackUp()
    {
        using var z = new TestZone(2, MigrateType.Movable);
        Assert.Equal(MaxOrder, z.Zone.MaxOrder);
        Assert.Equal(2, z.Free(MaxOrder, MigrateType.Movable));

        int page = z.Allocate(1, MigrateType.Movable);
        Assert.True(page >= 0);
        for (int o = 0; o < MaxOrder; o++) Assert.Equal(1, z.Free(o, MigrateType.Movable));   // one buddy per order
        Assert.Equal(1, z.Free(MaxOrder, MigrateType.Movable));
        Assert.Equal(63, z.Zone.FreePages);
        Assert.True(z.Memory.IsCommitted(page / PageblockPages));
        z.AssertValid();

        z.Free(page, 1);
        for (int o = 0; o < MaxOrder; o++) Assert.Equal(0, z.Free(o, MigrateType.Movable));
        Assert.Equal(2, z.Free(MaxOrder, MigrateType.Movable));
        Assert.Equal(64, z.Zone.FreePages);
        z.AssertValid();
    }

    [Fact]
    public void AnExactRunGivesItsPowerOfTwoTailBack()
    {
        using var z = new TestZone(1, MigrateType.Movable);
        int start = z.Allocate(5, MigrateType.Movable);   // from an order-3 block: pages 5..7 go back
        Assert.Equal(27, z.Zone.FreePages);
        Assert.Equal(0, start);
        // Split 0..31 into 0..7 (taken), 8..15 and 16..31; the tail 5..7 came back as an order-0 and an order-1 block.
        long[] expected = [1, 1, 0, 1, 1, 0];
        Assert.Equal(expected, Enumerable.Range(0, MaxOrder + 1).Select(o => z.Free(o, MigrateType.Movable)));
        z.AssertValid();
        z.Free(start, 5);
        Assert.Equal(1, z.Free(MaxOrder, MigrateType.Movable));
        z.AssertValid();
    }

    [Fact]
    public void ARunThatDoesNotFitTheRestOfItsPageblockContinuesIntoTheNextWhollyFreeOne()
    {
        using var z = new TestZone(2, MigrateType.Movable);
        int a = z.Allocate(12, MigrateType.Movable, mayCrossPageblock: true);   // pages 0..11; 12..15 are left
        int b = z.Allocate(6, MigrateType.Movable, mayCrossPageblock: true);    // 12..17: the rest of pageblock 0, then 1
        Assert.Equal((0, 12), (a, b));
        Assert.Equal(64 - 18, z.Zone.FreePages);
        z.AssertValid();
        // A slab never crosses: with 14 pages left in pageblock 1, a 15-page slab starts a new region in pageblock 2.
        Assert.Equal(32, z.Allocate(15, MigrateType.Movable));
        // Nor does a run of a pageblock's order (the compactor does not move those): it takes a whole pageblock.
        Assert.Equal(48, z.Allocate(9, MigrateType.Movable, mayCrossPageblock: true));
        z.Free(b, 6);
        z.Free(a, 12);
        z.AssertValid();
    }

    [Fact]
    public void ARunFillsAHoleElsewhereBeforeItBreaksAWhollyFreePageblockAndTheRegionStaysWhereItWas()
    {
        using var z = new TestZone(2, MigrateType.Movable);
        int a1 = z.Allocate(8, MigrateType.Movable, mayCrossPageblock: true);   // 0..7
        int a2 = z.Allocate(8, MigrateType.Movable, mayCrossPageblock: true);   // 8..15: pageblock 0 is full
        int b = z.Allocate(12, MigrateType.Movable, mayCrossPageblock: true);   // 16..27: the region ends at 28
        Assert.Equal((0, 8, 16), (a1, a2, b));
        z.Free(a1, 8);                                                          // an order-3 hole at 0
        // 8 pages do not fit in 28..31; the hole at 0 holds them, so pageblock 2 is not broken into...
        Assert.Equal(0, z.Allocate(8, MigrateType.Movable, mayCrossPageblock: true));
        // ...and the region is still at 28: the next run that fits there goes there.
        Assert.Equal(28, z.Allocate(4, MigrateType.Movable, mayCrossPageblock: true));
        z.AssertValid();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void RandomRunsFreedInAnyOrderMergeBackToMaxOrderBlocks(int seed)
    {
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        const int blocks = 8, pages = blocks << MaxOrder;
        using var z = new TestZone(blocks, MigrateType.Movable);
        var owner = new int[pages];                       // 0 free, else run id
        var runs = new List<(int Start, int Count)>();
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int count = rng.Next(4) == 0 ? rng.Next(17, 60) : rng.Next(1, 12);   // some beyond the max order
            int start = z.Allocate(count, MigrateType.Movable);
            if (start < 0) continue;
            for (int p = start; p < start + count; p++)
            {
                Assert.True(owner[p] == 0, $"page {p} handed out twice");
                owner[p] = runs.Count + 1;
            }
            runs.Add((start, count));
            Assert.Equal(pages - runs.Sum(r => r.Count), z.Zone.FreePages);
        }
        z.AssertValid();
        Assert.True(runs.Count > 10);

        foreach ((int start, int count) in runs.OrderBy(_ => rng.Next()))
        {
            z.Free(start, count);
            z.AssertValid();
        }
        Assert.Equal(pages, z.Zone.FreePages);
        Assert.Equal(blocks, z.Free(MaxOrder, MigrateType.Movable));
        for (int o = 0; o < MaxOrder; o++) Assert.Equal(0, z.Free(o, MigrateType.Movable));
    }

    [Fact]
    public void BuddiesInPageblocksOfDifferentMigrateTypesNeverMerge()
    {
        using var z = new TestZone(1, MigrateType.Movable);
        int start = z.Allocate(32, MigrateType.Movable);
        Assert.Equal(0, start);
        z.Map.SetMigrateType(0, MigrateType.Unmovable);   // pageblock 0 changes type while its pages are in use
        z.Free(0, 16);
        z.Free(16, 16);
        Assert.Equal(1, z.Free(4, MigrateType.Unmovable));
        Assert.Equal(1, z.Free(4, MigrateType.Movable));
        Assert.Equal(0, z.Free(MaxOrder, MigrateType.Unmovable) + z.Free(MaxOrder, MigrateType.Movable));
        z.AssertValid();

        // The same frees with matching types merge into the max-order block.
        z.Map.SetMigrateType(0, MigrateType.Movable);
        using var same = new TestZone(1, MigrateType.Movable);
        Assert.Equal(0, same.Allocate(32, MigrateType.Movable));
        same.Free(0, 16);
        same.Free(16, 16);
        Assert.Equal(1, same.Free(MaxOrder, MigrateType.Movable));
        same.AssertValid();
    }

    [Fact]
    public void WithinOnePageblockBuddiesMergeWhateverTheTypeTheyWereAllocatedAs()
    {
        using var z = new TestZone(1, MigrateType.Movable);
        int a = z.Allocate(16, MigrateType.Movable);
        int b = z.Allocate(8, MigrateType.Movable);
        int c = z.Allocate(8, MigrateType.Movable);
        Assert.Equal([0, 16, 24], new[] { a, b, c }.Order());
        z.Free(16, 8);
        z.Free(24, 8);
        Assert.Equal(1, z.Free(4, MigrateType.Movable));       // 16..31 merged back into a pageblock
        z.Free(0, 16);
        Assert.Equal(1, z.Free(MaxOrder, MigrateType.Movable));
        z.AssertValid();
    }

    /// <summary>Fills pageblock 0 and pageblock 1 of a one-block movable zone with movable 4-page runs and returns
    /// the runs by start page (16, 20, 24, 28 in pageblock 1).</summary>
    private static void FillWithMovableRuns(TestZone z)
    {
        Assert.Equal(0, z.Allocate(16, MigrateType.Movable));
        var starts = Enumerable.Range(0, 4).Select(_ => z.Allocate(4, MigrateType.Movable)).Order().ToArray();
        Assert.Equal([16, 20, 24, 28], starts);
        Assert.Equal(0, z.Zone.FreePages);
    }

    [Fact]
    public void FallbackStealsASingleBlockWhenLessThanHalfThePageblockIsCompatible()
    {
        using var z = new TestZone(1, MigrateType.Movable);
        FillWithMovableRuns(z);
        z.Free(16, 4);                                   // pageblock 1: 4 free, 12 movable in use

        int page = z.Allocate(4, MigrateType.Unmovable); // no unmovable free block: fall back to a movable one
        Assert.Equal(16, page);
        Assert.Equal(MigrateType.Movable, z.Map.GetMigrateType(1));   // 4 of 16 is less than half: no claim
        Assert.Equal(1, z.Zone.Stats.PageblockFallbacks);
        Assert.Equal(0, z.Zone.Stats.PageblocksClaimed);
        Assert.Equal(MigrateType.Unmovable, z.Map.Page(16).AllocType);
        z.AssertValid();
    }

    [Fact]
    public void FallbackClaimsThePageblockWhenAtLeastHalfIsFreeOrCompatible()
    {
        using var z = new TestZone(1, MigrateType.Movable);
        FillWithMovableRuns(z);
        z.Free(16, 4);
        Assert.Equal(16, z.Allocate(4, MigrateType.Unmovable));      // stolen: pages 16..19 are unmovable now
        z.Free(28, 4);                                                // pageblock 1: 4 free + 4 unmovable = half

        int page = z.Allocate(1, MigrateType.Unmovable);
        Assert.Equal(28, page);
        Assert.Equal(MigrateType.Unmovable, z.Map.GetMigrateType(1));  // claimed
        Assert.Equal(MigrateType.Movable, z.Map.GetMigrateType(0));
        Assert.Equal(1, z.Zone.Stats.PageblocksClaimed);
        Assert.Equal(2, z.Zone.Stats.PageblockFallbacks);
        // The rest of the order-2 block (pages 29, 30..31) now sits on the unmovable lists, none on the movable ones.
        Assert.Equal(1, z.Free(0, MigrateType.Unmovable));
        Assert.Equal(1, z.Free(1, MigrateType.Unmovable));
        for (int o = 0; o <= MaxOrder; o++) Assert.Equal(0, z.Free(o, MigrateType.Movable));
        z.AssertValid();

        // And the next unmovable request is served from the claimed pageblock without another fallback.
        Assert.Equal(29, z.Allocate(1, MigrateType.Unmovable));
        Assert.Equal(2, z.Zone.Stats.PageblockFallbacks);
        z.AssertValid();
    }

    [Fact]
    public void SmallMovableFallbackStealsEvenFromAMostlyFreePageblockButALargeOneClaimsIt()
    {
        using var z = new TestZone(1, MigrateType.Unmovable);
        Assert.Equal(0, z.Allocate(16, MigrateType.Unmovable));
        Assert.Equal(16, z.Allocate(4, MigrateType.Unmovable));         // pageblock 1: 12 of 16 free

        z.Allocate(1, MigrateType.Movable);         // order 0 < pageblock order / 2, movable: never claims
        Assert.Equal(MigrateType.Unmovable, z.Map.GetMigrateType(1));
        Assert.Equal(0, z.Zone.Stats.PageblocksClaimed);

        z.Allocate(4, MigrateType.Movable);         // order 2 >= pageblock order / 2 and 11 free + 1 movable >= 8
        Assert.Equal(MigrateType.Movable, z.Map.GetMigrateType(1));
        Assert.Equal(1, z.Zone.Stats.PageblocksClaimed);
        Assert.Equal(MigrateType.Unmovable, z.Map.GetMigrateType(0));
        z.AssertValid();
    }

    [Fact]
    public void FallbackTakesAWholeFreePageblockOutright()
    {
        using var z = new TestZone(2, MigrateType.Movable);
        Assert.True(z.Allocate(1, MigrateType.Unmovable) >= 0);
        // The largest movable block (order 5) was taken: both its pageblocks became unmovable, the other block did not.
        // (The zone's type, not the raw bitmap: the untouched block above the frontier has no type bits written yet.)
        int unmovable = Enumerable.Range(0, 4).Count(pb => z.Zone.MigrateTypeOf(pb) == MigrateType.Unmovable);
        Assert.Equal(2, unmovable);
        Assert.Equal(1, z.Free(MaxOrder, MigrateType.Movable));
        Assert.Equal(31, Enumerable.Range(0, MaxOrder + 1).Sum(o => z.Free(o, MigrateType.Unmovable) << o));
        z.AssertValid();
    }

    /// <summary>A fallback whose commit is refused (the memory limit, or the OS) changes nothing: the pageblocks keep
    /// their type and the free lists are as they were. It used to retype them first and free the pages back after the
    /// refusal, so each refused attempt flipped whole pageblocks to the other type. The same holds for a run of
    /// contiguous pageblocks, retyped outright when taken.</summary>
    [Fact]
    public void ARefusedCommitLeavesTheFallbacksPageblocksOfTheirType()
    {
        using var z = new TestZone(4, MigrateType.Movable);   // pageblocks 0..7, none committed
        z.Memory.LimitBytes = 1;                             // every commit refused
        Assert.Equal(-1, z.Allocate(1, MigrateType.Unmovable));                 // a fallback to an order-5 block
        Assert.Equal(-1, z.Allocate(3 * PageblockPages, MigrateType.Unmovable)); // contiguous pageblocks
        Assert.True(ArenaMemory.TakeLimitRefusal());                            // a limit's refusal, as the heap sees it
        Assert.Equal(0, z.Memory.CommittedBytes);
        Assert.All(Enumerable.Range(0, 8), pb => Assert.Equal(MigrateType.Movable, z.Zone.MigrateTypeOf(pb)));
        for (int o = 0; o <= MaxOrder; o++) Assert.Equal(0, z.Free(o, MigrateType.Unmovable));
        Assert.Equal(0, z.Zone.Stats.PageblockFallbacks);
        z.AssertValid();

        // Once commits are allowed again, the same requests fall back as before.
        z.Memory.LimitBytes = long.MaxValue;
        Assert.True(z.Allocate(1, MigrateType.Unmovable) >= 0);
        Assert.Equal(2, Enumerable.Range(0, 8).Count(pb => z.Zone.MigrateTypeOf(pb) == MigrateType.Unmovable));
        Assert.Equal(1, z.Zone.Stats.PageblockFallbacks);
        z.AssertValid();
    }

    [Fact]
    public void ARunLargerThanTheMaxOrderTakesContiguousWhollyFreePageblocks()
    {
        using var z = new TestZone(4, MigrateType.Movable);              // pageblocks 0..7
        int small = z.Allocate(1, MigrateType.Movable);
        int big = z.Allocate(40, MigrateType.Movable);                   // 3 pageblocks; 8 pages go back
        Assert.Equal(0, big % PageblockPages);
        Assert.True(small < big || small >= big + 48, "the run does not overlap the small block's pageblock");
        Assert.Equal(128 - 41, z.Zone.FreePages);
        for (int pb = big / PageblockPages; pb < big / PageblockPages + 3; pb++) Assert.True(z.Memory.IsCommitted(pb));
        z.AssertValid();
        z.Free(big, 40);
        z.Free(small, 1);
        Assert.Equal(4, z.Free(MaxOrder, MigrateType.Movable));
        z.AssertValid();
    }
}
