using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The process-wide barrier is paid per unit of work, not per block, slab or cluster (native-layout.md, section 9,
/// "Units of work and barriers"): the counts, never the time.
/// </summary>
public class CompactionBarrierTests(ITestOutputHelper output)
{
    private const int PageblockPages = 64;
    private const long PageblockBytes = PageblockPages * 4096L;

    /// <summary>A heap of small blocks of many classes, three in four freed at random, with free committed room above
    /// it (destinations come from committed memory only). Caches off: a direct zone pass needs no drain.</summary>
    private static (NativeHeap heap, List<BlockHandle> kept) Fragmented(int seed, Func<Random, int> size, int blocks)
    {
        NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false, arenaBytes: 32L << 20, pageblockPages: PageblockPages);
        var rng = new Random(seed);
        var all = new List<BlockHandle>();
        for (int i = 0; i < blocks; i++)
        {
            BlockHandle h = heap.Allocate(size(rng));
            TestHeaps.Fill(heap, h);
            all.Add(h);
        }
        TestHeaps.CommitFreeSpaceAbove(heap, 8);
        var kept = new List<BlockHandle>();
        foreach (BlockHandle h in all)
            if (rng.Next(4) == 0) kept.Add(h); else heap.Free(h);
        return (heap, kept);
    }

    [Fact]
    public void AZonePassPaysOneBarrierPerPageblockItMovesBlocksOutOf()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, rng => rng.Next(16, 512), 20_000);
        using (heap)
        {
            Dictionary<BlockHandle, nint> before = kept.ToDictionary(h => h, heap.CurrentAddress);
            CompactionStatistics start = heap.GetStatistics().Compaction;
            lock (heap.Compactor!.RunLock) heap.Compactor.CompactZone(new CompactControl { Mode = CompactMode.SyncLight, WholeZone = true });
            CompactionStatistics end = heap.GetStatistics().Compaction;
            // The arena's base is pageblock-aligned, so an address divided by the pageblock's bytes names its pageblock.
            HashSet<long> sources = kept.Where(h => heap.CurrentAddress(h) != before[h]).Select(h => (long)before[h] / PageblockBytes).ToHashSet();
            long movedBlocks = kept.Count(h => heap.CurrentAddress(h) != before[h]);
            long barriers = end.Barriers - start.Barriers;
            output.WriteLine($"{movedBlocks} blocks moved out of {sources.Count} pageblocks under {barriers} barriers; {end.BytesMoved - start.BytesMoved} bytes");
            Assert.True(sources.Count >= 2, "the pass moved blocks out of several pageblocks");
            Assert.True(movedBlocks > 10 * sources.Count, "many blocks per pageblock (one barrier each before was one per slab)");
            Assert.Equal(sources.Count, barriers);
            foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }

    [Fact]
    public void ConsolidationHoldsTheClassLockForOneSourceSlabAtATimeAndMutatorsMayWorkBetween()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, _ => 256, 8_000);
        using (heap)
        {
            var rng = new Random(seed);
            var added = new List<BlockHandle>();
            int calls = 0, freed = 0;
            heap.Compactor!.BetweenConsolidationSources = cls =>
            {
                calls++;
                Assert.False(cls.Lock.IsHeldByCurrentThread, "the class lock is released between two sources");
                // Another thread allocates in the class and frees kept blocks (some of them listed in this batch): it
                // must get the class lock now, not after the batch.
                Task mutator = Task.Run(() =>
                {
                    for (int i = 0; i < 4; i++)
                    {
                        BlockHandle h = heap.Allocate(256);
                        TestHeaps.Fill(heap, h);
                        lock (added) added.Add(h);
                    }
                    lock (kept)
                    {
                        for (int i = 0; i < 2 && kept.Count > 0; i++)
                        {
                            int at = rng.Next(kept.Count);
                            heap.Free(kept[at]);
                            kept.RemoveAt(at);
                            freed++;
                        }
                    }
                });
                Assert.True(mutator.Wait(TimeSpan.FromSeconds(30)), "a mutator waited for the class lock across sources");
            };
            try
            {
                lock (heap.Compactor.RunLock) heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncFull });
            }
            finally
            {
                heap.Compactor.BetweenConsolidationSources = null;
            }
            output.WriteLine($"{calls} sources added with the lock released after each; {added.Count} blocks allocated and {freed} freed between them");
            Assert.True(calls >= 8, $"only {calls} sources");
            Assert.Equal(4 * calls, added.Count);
            Assert.True(heap.GetStatistics().Compaction.PagesCompacted > 0);
            foreach (BlockHandle h in kept.Concat(added)) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }

    [Fact]
    public void AnExceptionBetweenTwoSourcesPutsTheBatchsSourcesBack()
    {
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(7, _ => 256, 8_000);
        using (heap)
        {
            int calls = 0;
            heap.Compactor!.BetweenConsolidationSources = _ =>
            {
                if (++calls == 3) throw new InvalidOperationException("stands for an interrupted lock wait");
            };
            try
            {
                lock (heap.Compactor.RunLock)
                    Assert.Throws<InvalidOperationException>(() => heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncFull }));
            }
            finally
            {
                heap.Compactor.BetweenConsolidationSources = null;
            }
            // The three isolated sources are back on their lists and their destination slots free again: the heap
            // validates, and a later consolidation empties them like any other.
            TestHeaps.AssertValid(heap);
            lock (heap.Compactor.RunLock) heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncFull });
            Assert.True(heap.GetStatistics().Compaction.PagesCompacted > 0);
            foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }

    [Fact]
    public void ConsolidationMovesAtLeastHalfAPageblockOfSourceSlabsUnderEachBarrier()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, _ => 256, 8_000);
        using (heap)
        {
            CompactionStatistics start = heap.GetStatistics().Compaction;
            lock (heap.Compactor!.RunLock) heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncFull });
            CompactionStatistics end = heap.GetStatistics().Compaction;
            long barriers = end.Barriers - start.Barriers, pagesCompacted = end.PagesCompacted - start.PagesCompacted;
            output.WriteLine($"{pagesCompacted} slab pages compacted under {barriers} barriers; {end.BytesMoved - start.BytesMoved} bytes");
            Assert.True(pagesCompacted >= 4 * PageblockPages, $"consolidation freed {pagesCompacted} pages");
            Assert.True(barriers > 0);
            // Each batch takes source slabs until they hold a pageblock's worth of pages (or the class has no more to
            // give, once, at its end): at least half a pageblock of freed sources per barrier, with one batch to spare.
            Assert.True(barriers * (PageblockPages / 2) <= pagesCompacted + PageblockPages, $"{barriers} barriers for {pagesCompacted} pages");
            foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }
}
