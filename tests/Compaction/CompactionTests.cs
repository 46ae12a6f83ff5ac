using System.Globalization;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

public class CompactionTests(ITestOutputHelper output)
{
    private const int PageblockPages = 64;
    private const long PageblockBytes = PageblockPages * 4096L;

    private static NativeHeap MovableOnly(long arenaBytes = 32L << 20, bool cachesDuringMigration = false, bool direct = true) => new(new HeapOptions
    {
        ArenaBytes = arenaBytes,
        PageblockPages = PageblockPages,
        MovableZonePercent = 100,
        ThreadCachesDuringMigration = cachesDuringMigration,
        DirectCompaction = direct,
    });

    private static int FreePageblocks(NativeHeap heap)
    {
        IReadOnlyList<ZoneStatistics> zones = heap.GetStatistics().Zones;
        ZoneStatistics z = zones[zones.Count - 1];
        long[] free = z.FreeBlocksPerOrder();
        long pages = 0;
        for (int o = 6; o < free.Length; o++) pages += free[o] << o;
        return (int)(pages / PageblockPages);
    }

    /// <summary>Fills the zone with a seeded mix of slab blocks and runs, then frees three in four at random.</summary>
    private static List<BlockHandle> FillAndFragment(NativeHeap heap, Random rng, double keep = 0.25, long fillBytes = 0)
    {
        var all = new List<BlockHandle>();
        long filled = 0, target = fillBytes > 0 ? fillBytes : long.MaxValue;
        while (filled < target)
        {
            long size = rng.Next(3) == 0 ? rng.Next(17_000, 60_000) : rng.Next(16, 4000);
            if (!heap.TryAllocate(size, BlockKind.Movable, out BlockHandle h)) break;
            TestHeaps.Fill(heap, h);
            all.Add(h);
            filled += size;
        }
        var kept = new List<BlockHandle>();
        foreach (BlockHandle h in all)
            if (rng.NextDouble() < keep) kept.Add(h); else heap.Free(h);
        return kept;
    }

    [Fact]
    public void FullCompactionMovesBlocksAndFreesWholePageblocksWithoutLosingAByte()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        using NativeHeap heap = MovableOnly(direct: false);
        List<BlockHandle> kept = FillAndFragment(heap, new Random(seed));
        int before = FreePageblocks(heap);
        CompactionStatistics run = heap.Compact();
        int after = FreePageblocks(heap);
        output.WriteLine($"free pageblocks {before} -> {after}; {run}");
        Assert.True(run.PgmigrateSuccess > 0);
        Assert.True(run.CompactMigrateScanned > 0 && run.CompactFreeScanned > 0 && run.CompactIsolated > 0);
        Assert.True(after > before, $"free pageblocks {before} -> {after}");
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        Assert.True(heap.AllPageblocksFree());
    }

    [Fact]
    public void MigratingTheOnlyBlockOfItsClassMovesItToAFreshSlab()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        nint before = heap.CurrentAddress(h);
        Assert.Equal(MigrateResult.Success, heap.Migrate(h));
        Assert.NotEqual(before, heap.CurrentAddress(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void SlabConsolidationEmptiesTheLeastFullSlabsUntilNoneCouldBeFreed()
    {
        using NativeHeap heap = MovableOnly(direct: false);
        var rng = new Random(11);
        var blocks = Enumerable.Range(0, 20_000).Select(_ => heap.Allocate(48)).ToList();
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        var kept = blocks.Where(_ => rng.Next(5) == 0).ToHashSet();
        foreach (BlockHandle h in blocks) if (!kept.Contains(h)) heap.Free(h);
        heap.ReleaseFreeMemory(); // drains caches so the slab counts are exact
        SlabClassStatistics before = heap.GetStatistics().SlabClasses.Single(c => c.SlotSize == 48);
        CompactionStatistics run = heap.Compact();
        SlabClassStatistics after = heap.GetStatistics().SlabClasses.Single(c => c.SlotSize == 48);
        output.WriteLine($"slabs {before.Slabs} -> {after.Slabs}, occupancy {before.Occupancy:P0} -> {after.Occupancy:P0}, pages_compacted {run.PagesCompacted}");
        Assert.True(run.PagesCompacted > 0);
        // zs_can_compact is zero at the end: fewer than one slab's worth of free slots remains.
        Assert.True((after.Slabs * after.SlotsPerSlab - after.UsedSlots) < after.SlotsPerSlab);
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    /// <summary>Seed 000: pinned pages are rejected by a lock-free read, so they cost no lock and no failed migration.</summary>
    [Fact]
    public void PinnedPagesCostNoLockAndNoFailedMigration()
    {
        using NativeHeap heap = MovableOnly();
        var blocks = new List<BlockHandle>();
        while (heap.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        var rng = new Random(5);
        var pins = new List<BlockPin>();
        var unpinned = new List<BlockHandle>();
        foreach (BlockHandle h in blocks)
            if (rng.Next(10) != 0) pins.Add(heap.AcquirePin(h)); else unpinned.Add(h);
        // Free half of the unpinned blocks so that the other half has somewhere to go.
        for (int i = 0; i < unpinned.Count; i += 2) heap.Free(unpinned[i]);
        int movable = unpinned.Count - (unpinned.Count + 1) / 2;
        long pageblocks = heap.GetStatistics().Zones.Single().Pages / PageblockPages;

        CompactionStatistics run;
        try
        {
            run = heap.Compact();
        }
        finally
        {
            pins.ForEach(p => p.Dispose());
        }
        output.WriteLine($"{pins.Count} pinned, {movable} movable: {run}");
        Assert.Equal(0, run.PgmigrateFail);
        // The migrate scanner covers the zone up to where it meets the free scanner; every pinned page it met was
        // rejected by the cheap check.
        double scannedShare = run.CompactMigrateScanned / (double)(pageblocks * PageblockPages);
        Assert.True(run.PinnedPagesSkipped >= 0.8 * pins.Count * 5 * scannedShare, $"pinned pages skipped {run.PinnedPagesSkipped}");
        Assert.True(run.PgmigrateSuccess > 0, "the unpinned rest is still compacted");
        // Locks: a handful per moved unit and per pageblock scanned, none per pinned unit (there are 9x more of them).
        long bound = 4L * movable + 3 * pageblocks + 16;
        Assert.True(run.LockAcquisitions <= bound, $"{run.LockAcquisitions} locks > {bound}");
        Assert.True(run.LockAcquisitions < run.PinnedPagesSkipped / 5, "fewer locks than pinned blocks met");
        TestHeaps.AssertValid(heap);
    }

    /// <summary>Seed 001: slots held by per-thread caches make slab migration fail; disabling the caches during
    /// migration removes those failures.</summary>
    [Fact]
    public void DisablingThreadCachesDuringMigrationCutsCacheHeldFailuresTenfold()
    {
        long withCaches = CacheHeldFailures(cachesDuringMigration: true);
        long disabled = CacheHeldFailures(cachesDuringMigration: false);
        output.WriteLine($"cache-held failures: caches on {withCaches}, disabled {disabled}");
        Assert.True(withCaches > 0);
        Assert.True(disabled * 10 <= withCaches);
    }

    private static long CacheHeldFailures(bool cachesDuringMigration)
    {
        using NativeHeap heap = MovableOnly(cachesDuringMigration: cachesDuringMigration, direct: false);
        using var ready = new CountdownEvent(4);
        using var done = new ManualResetEventSlim();
        var keep = new List<BlockHandle>[4];
        var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
        {
            // Allocate across classes, free most: the freed slots stay in this thread's cache, one per slab or so.
            var rng = new Random(100 + t);
            var mine = Enumerable.Range(0, 3000).Select(_ => heap.Allocate(rng.Next(16, 1024))).ToList();
            keep[t] = [];
            foreach (BlockHandle h in mine) if (rng.Next(4) == 0) keep[t].Add(h); else heap.Free(h);
            ready.Signal();
            done.Wait();   // stay alive: the cache (and its references) lives with the thread
            keep[t].ForEach(heap.Free);
        })).ToList();
        threads.ForEach(t => t.Start());
        ready.Wait();
        long failures;
        try
        {
            failures = heap.Compact().CacheHeldFailures;
        }
        finally
        {
            done.Set();
            threads.ForEach(t => t.Join());
        }
        return failures;
    }

    /// <summary>Seed 002: after a seeded mix is fragmented, compaction grants most of the pageblock-sized runs that
    /// the free memory could hold (free pages / pageblock). The benchmark (2 MiB pageblocks) reaches the 98%
    /// at the median; with this test's 64-page pageblocks it is 100% at the median and 93% at worst over 300 seeds
    /// (runs are contiguous and exact, and the 1-4 page tails they leave can only be filled by slabs that small).</summary>
    [Fact]
    public void HighOrderRequestsAfterFragmentationSucceedWithCompaction()
    {
        int seed = Environment.GetEnvironmentVariable("STRESS_SEED") is string s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        (int granted, int capacity, long _) without = HighOrderRun(seed, compaction: false);
        (int granted, int capacity, long _) with = HighOrderRun(seed, compaction: true);
        output.WriteLine($"pageblock-sized runs granted: without compaction {without.granted}/{without.capacity}, with {with.granted}/{with.capacity}");
        Assert.True(with.granted >= 0.9 * with.capacity, $"{with.granted} of {with.capacity}");
        Assert.True(with.granted > without.granted);
    }

    /// <summary>Seeds on which the walk down from the top filled the pool with short holes and left a sparse 16-page
    /// slab alone in its pageblock while the pageblock above it had 48 free pages: 75-80 of 84-90 runs were granted
    /// (the test above asks for 90%). The free scanner now takes a block of the unit's size from the free lists.</summary>
    [Theory]
    [InlineData(1332617375)]
    [InlineData(1590924033)]
    [InlineData(1097663221)]
    public void HighOrderCompactionFindsTargetsOnTheFreeListsOnceTheWalkStops(int seed)
    {
        (int granted, int capacity, long freeListIsolated) = HighOrderRun(seed, compaction: true);
        output.WriteLine($"granted {granted}/{capacity}, free-list pages isolated {freeListIsolated}");
        Assert.True(granted >= 0.9 * capacity, $"{granted} of {capacity}");
        Assert.True(freeListIsolated > 0);
    }

    private static (int granted, int capacity, long freeListIsolated) HighOrderRun(int seed, bool compaction)
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 64L << 20, PageblockPages = PageblockPages, MovableZonePercent = 75, DirectCompaction = compaction,
            // Direct compaction alone: the soft limit (WasteHighRatio) changes where the fill lands and makes
            // allocations reuse room before committing, which is another question than seed 002's.
            WasteHighRatio = 0,
        });
        var rng = new Random(seed);
        var all = new List<BlockHandle>();
        // Unmovable blocks fill part of the normal zone; movable ones fill most of the movable zone.
        long normalBytes = 16L << 20, movableBytes = 48L << 20;
        for (long filled = 0; filled < normalBytes * 0.9;)
        {
            long size = rng.Next(16, 8000);
            if (!heap.TryAllocate(size, BlockKind.Unmovable, out BlockHandle h)) break;
            all.Add(h); filled += size;
        }
        for (long filled = 0; filled < movableBytes * 0.9;)
        {
            long size = rng.Next(3) == 0 ? rng.Next(17_000, 60_000) : rng.Next(16, 4000);
            if (!heap.TryAllocate(size, BlockKind.Movable, out BlockHandle h)) break;
            all.Add(h); filled += size;
        }
        foreach (BlockHandle h in all) if (rng.Next(2) == 0) heap.Free(h);
        heap.ReleaseFreeMemory();   // drain caches and retained slabs: free memory is what the lists say
        HeapStatistics stats = heap.GetStatistics();
        int capacity = (int)(stats.Zones[1].FreePages / PageblockPages) + WhollyFreePageblocks(stats.Zones[0]);
        // Like the kernel's stress test, keep asking: a failure defers direct compaction for up to 64 attempts.
        int granted = 0;
        for (int failures = 0; failures <= 1 << Compactor.MaxDeferShift;)
        {
            if (heap.TryAllocate(PageblockBytes, BlockKind.Movable, out _)) { granted++; failures = 0; }
            else failures++;
        }
        TestHeaps.AssertValid(heap);
        return (granted, capacity, heap.GetStatistics().Compaction.FreeListIsolated);
    }

    private static int WhollyFreePageblocks(ZoneStatistics z)
    {
        long[] free = z.FreeBlocksPerOrder();
        long pages = 0;
        for (int o = 6; o < free.Length; o++) pages += free[o] << o;
        return (int)(pages / PageblockPages);
    }

    [Fact]
    public void DirectCompactionCapturesTheRunAndDefersAfterFailure()
    {
        using NativeHeap heap = MovableOnly(arenaBytes: 4L << 20);
        // Pin a block in every pageblock: compaction cannot free any pageblock.
        // 64 runs of 16 pages fill the 1024 pages exactly, four to a pageblock, without a failed allocation.
        var pins = new List<BlockPin>();
        var blocks = Enumerable.Range(0, 64).Select(_ => heap.Allocate(65_000)).ToList();
        Assert.Equal(0, heap.GetStatistics().Compaction.CompactStall);
        foreach (BlockHandle h in blocks) pins.Add(heap.AcquirePin(h));
        try
        {
            DeferAndCapture(heap, blocks, pins);
        }
        finally
        {
            pins.ForEach(p => p.Dispose());
        }
    }

    private static void DeferAndCapture(NativeHeap heap, List<BlockHandle> blocks, List<BlockPin> pins)
    {
        for (int i = 0; i < pins.Count; i += 2) { pins[i].Dispose(); heap.Free(blocks[i]); }
        Assert.False(heap.TryAllocate(PageblockBytes, BlockKind.Movable, out _));
        CompactionStatistics s1 = heap.GetStatistics().Compaction;
        Assert.Equal(1, s1.CompactStall);
        Assert.Equal(1, s1.CompactFail);
        Assert.Equal((0, 1, 6), heap.Compactor!.Deferral);
        // The next attempt is deferred (1 << shift considered attempts are skipped).
        Assert.False(heap.TryAllocate(PageblockBytes, BlockKind.Movable, out _));
        Assert.Equal(1, heap.GetStatistics().Compaction.CompactStall);
        Assert.Equal(1, heap.GetStatistics().Compaction.CompactDeferred);
        // Failing repeatedly raises the shift to at most 6.
        for (int i = 0; i < 300; i++) heap.TryAllocate(PageblockBytes, BlockKind.Movable, out _);
        Assert.Equal(6, heap.Compactor.Deferral.shift);
        // Release the pins: the next direct compaction succeeds, captures the run, and resets the deferral.
        for (int i = 1; i < pins.Count; i += 2) pins[i].Dispose();
        BlockHandle big = default;
        for (int i = 0; i < 100 && !heap.TryAllocate(PageblockBytes, BlockKind.Movable, out big); i++) { }
        Assert.False(big.IsNull);
        CompactionStatistics s2 = heap.GetStatistics().Compaction;
        Assert.True(s2.CompactSuccess >= 1 && s2.Captured >= 1);
        Assert.Equal(0, heap.Compactor.Deferral.shift);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void APageblockFromWhichNothingCouldBeIsolatedIsSkippedUntilAFullCompactionResetsIt()
    {
        using NativeHeap heap = MovableOnly(arenaBytes: 4L << 20);
        var blocks = new List<BlockHandle>();
        while (heap.TryAllocate(60_000, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        var pins = blocks.Select(heap.AcquirePin).ToList();
        lock (heap.Compactor!.RunLock) heap.Compactor.CompactZone(new CompactControl { Mode = CompactMode.SyncLight, WholeZone = true });
        long skipsSet = heap.GetStatistics().Compaction.SkipBitsSet;
        Assert.True(skipsSet > 0);
        long scanned = heap.GetStatistics().Compaction.CompactMigrateScanned;
        lock (heap.Compactor!.RunLock) heap.Compactor.CompactZone(new CompactControl { Mode = CompactMode.SyncLight, WholeZone = true });
        Assert.Equal(scanned, heap.GetStatistics().Compaction.CompactMigrateScanned);   // every pageblock skipped
        pins.ForEach(p => p.Dispose());
        heap.Compact();   // SyncFull ignores and resets skip bits
        Assert.True(heap.GetStatistics().Compaction.CompactMigrateScanned > scanned);
    }

    [Fact]
    public void EmptiedPageblocksAreDecommittedOnlyAfterTheDelay()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = PageblockPages, DecommitDelay = TimeSpan.FromSeconds(10) });
        var blocks = Enumerable.Range(0, 100).Select(_ => heap.Allocate(50_000)).ToList();
        long committed = heap.GetStatistics().CommittedBytes;
        blocks.ForEach(heap.Free);
        Assert.Equal(0, heap.RunCompactionStep(TimeSpan.FromSeconds(1)).BytesDecommitted);
        Assert.Equal(0, heap.RunCompactionStep(TimeSpan.FromSeconds(5)).BytesDecommitted);
        Assert.Equal(committed, heap.RunCompactionStep(TimeSpan.FromSeconds(11.5)).BytesDecommitted);
        Assert.Equal(0, heap.GetStatistics().CommittedBytes);
    }

    [Fact]
    public void TheBackgroundStepCompactsAboveTheHighWatermarkAndBacksOffWithoutProgress()
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 32L << 20, PageblockPages = PageblockPages, MovableZonePercent = 100,
            CompactionBudgetBytes = 0, CompactionBudgetTime = TimeSpan.Zero,
            // A clock that never moves: the wake's slice is ample, so one wake runs the whole pass.
            TimeProvider = new ManualTimeProvider(),
            // The proactive trigger alone: a waste-driven run, once started, is the whole of every wake until it ends.
            WasteHighRatio = 0,
        });
        // Three quarters of every pageblock freed: the kernel's proactive-compaction experiment in small.
        var blocks = new List<BlockHandle>();
        while (heap.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        for (int i = 0; i < blocks.Count; i++) if (i % 4 != 0) heap.Free(blocks[i]);
        int before = heap.GetStatistics().FragmentationScore;
        Assert.True(before > 90, $"score {before}");
        CompactionStatistics step = heap.RunCompactionStep(TimeSpan.FromSeconds(1));
        int after = heap.GetStatistics().FragmentationScore;
        output.WriteLine($"score {before} -> {after}; {step}");
        Assert.Equal(1, step.CompactDaemonWake);
        Assert.True(step.CompactDaemonMigrateScanned > 0 && step.PgmigrateSuccess > 0);
        Assert.True(after < 90, $"score {after}: the pass ends at the low watermark (80) or when the scanners meet");
        TestHeaps.AssertValid(heap);

        // Pin everything that is left and fragment again: a pass can make no progress, so the daemon backs off.
        var pins = blocks.Where((_, i) => i % 4 == 0).Select(heap.AcquirePin).ToList();
        var more = new List<BlockHandle>();
        while (heap.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) more.Add(h);
        for (int i = 0; i < more.Count; i++) if (i % 4 != 0) heap.Free(more[i]);
        var extra = more.Where((_, i) => i % 4 == 0).Select(heap.AcquirePin).ToList();
        int pinnedScore = heap.GetStatistics().FragmentationScore;
        Assert.True(pinnedScore > 90, $"score {pinnedScore}: the pinned layout must be above the high watermark for a pass to start");
        CompactionStatistics futile = heap.RunCompactionStep(TimeSpan.FromSeconds(2));
        Assert.True(futile.CompactDaemonMigrateScanned > 0, "the step above the high watermark ran no pass");
        Assert.Equal(0, futile.PgmigrateSuccess);                        // everything is pinned: no progress, so back off
        long scanned = heap.GetStatistics().Compaction.CompactDaemonMigrateScanned;
        for (int i = 0; i < 10; i++) Assert.Equal(1, heap.RunCompactionStep(TimeSpan.FromSeconds(3 + i)).CompactDaemonWake);
        Assert.Equal(scanned, heap.GetStatistics().Compaction.CompactDaemonMigrateScanned);
        // The back-off is bounded: 64 wakes after the futile pass (native-layout.md, "Compaction"), the daemon tries again.
        const int BackOffWakes = 64;
        for (int i = 0; i < BackOffWakes; i++) heap.RunCompactionStep(TimeSpan.FromSeconds(13 + i));
        Assert.True(heap.GetStatistics().Compaction.CompactDaemonMigrateScanned > scanned, "the daemon never tried again after its back-off");
        pins.ForEach(p => p.Dispose());
        extra.ForEach(p => p.Dispose());
    }

    [Fact]
    public void AnIdleBackgroundWakeMovesNothingAndLeavesTheThreadCachesAlone()
    {
        using NativeHeap heap = MovableOnly(direct: false);
        var rng = new Random(9);
        var live = Enumerable.Range(0, 5000).Select(_ => heap.Allocate(rng.Next(16, 256))).ToList();
        for (int i = 0; i < 200; i++) heap.Free(heap.Allocate(rng.Next(16, 256)));   // this thread's cache holds slots
        long cached = heap.GetStatistics().CachedSlots;
        Assert.True(cached > 0);
        CompactionStatistics step = heap.RunCompactionStep(TimeSpan.FromSeconds(1));
        Assert.Equal(1, step.CompactDaemonWake);
        Assert.Equal(0, step.BytesMoved);
        Assert.Equal(0, step.LockAcquisitions);
        Assert.Equal(cached, heap.GetStatistics().CachedSlots);   // not drained: nothing was worth migrating
        live.ForEach(heap.Free);
    }

    private sealed class RetryingOwner(int refusals, bool throws = false) : IMovableBlockOwner
    {
        public int MigrateCalls, Putbacks, Isolations;
        public nint NewAddress;
        public bool Isolate(BlockHandle handle) { Isolations++; return true; }
        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress)
        {
            MigrateCalls++;
            if (throws) throw new InvalidOperationException("owner refuses");
            if (MigrateCalls <= refusals) return OwnerMigrateResult.TryAgain;
            NewAddress = newAddress;
            return OwnerMigrateResult.Success;
        }
        public void Putback(BlockHandle handle) => Putbacks++;
    }

    [Fact]
    public void AnOwnerThatAnswersTryAgainThreeTimesIsMigratedOnTheFourthPass()
    {
        using NativeHeap heap = MovableOnly(direct: false);
        BlockHandle h = heap.Allocate(30_000);   // a run at the bottom of the zone; the top is free
        TestHeaps.Fill(heap, h);
        TestHeaps.CommitFreeSpaceAbove(heap, 4);   // ...and committed: room for the compactor's destination
        var owner = new RetryingOwner(refusals: 3);
        heap.SetMovableOwner(h, owner);
        nint before = heap.CurrentAddress(h);
        heap.Compact();
        Assert.Equal(4, owner.MigrateCalls);
        Assert.Equal(3, owner.Putbacks);
        Assert.Equal(3, heap.GetStatistics().Compaction.MigrateOwnerRetry);
        Assert.NotEqual(before, heap.CurrentAddress(h));
        Assert.Equal(owner.NewAddress, heap.CurrentAddress(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AnOwnerThatThrowsKeepsItsBlockIntact()
    {
        using NativeHeap heap = MovableOnly(direct: false);
        BlockHandle h = heap.Allocate(30_000);
        BlockHandle small = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        TestHeaps.Fill(heap, small);
        TestHeaps.CommitFreeSpaceAbove(heap, 4);
        var owner = new RetryingOwner(refusals: 0, throws: true);
        var smallOwner = new RetryingOwner(refusals: 0, throws: true);
        heap.SetMovableOwner(h, owner);
        heap.SetMovableOwner(small, smallOwner);
        nint before = heap.CurrentAddress(h), smallBefore = heap.CurrentAddress(small);
        CompactionStatistics run = heap.Compact();
        Assert.True(owner.MigrateCalls >= 1);
        Assert.Equal(owner.MigrateCalls, owner.Putbacks);
        Assert.Equal(before, heap.CurrentAddress(h));
        Assert.Equal(smallBefore, heap.CurrentAddress(small));
        Assert.True(run.PgmigrateFail > 0);
        Assert.Equal(owner.MigrateCalls + smallOwner.MigrateCalls, run.MigrateOwnerFailed);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, small));
        heap.Free(h);
        heap.Free(small);
        TestHeaps.AssertValid(heap);
    }

    private sealed class PinningOwner(NativeHeap heap) : IMovableBlockOwner
    {
        public Exception? Caught;
        public bool Isolate(BlockHandle handle) => true;
        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress)
        {
            try { heap.Pin(handle).Dispose(); } catch (InvalidOperationException e) { Caught = e; }
            return OwnerMigrateResult.Success;
        }
        public void Putback(BlockHandle handle) { }
    }

    [Fact]
    public void AnOwnerCallbackThatPinsItsOwnBlockGetsAnExceptionInsteadOfADeadlock()
    {
        using NativeHeap heap = MovableOnly(direct: false);
        BlockHandle h = heap.Allocate(30_000);
        TestHeaps.CommitFreeSpaceAbove(heap, 4);
        var owner = new PinningOwner(heap);
        heap.SetMovableOwner(h, owner);
        heap.Compact();
        Assert.IsType<InvalidOperationException>(owner.Caught);
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }
}
