using Compaction.Allocator;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// Work under a time budget stays within it by about one slab or unit (native-layout.md, section 9, "Slices that
/// keep their time"): a consolidation batch stops filling once its work would pass the budget, a zone pass cut inside
/// a pageblock resumes there, consolidation resumes in the class it stopped in, and a drain goes in steps. The clocks
/// are the tests' own (moved by hand, or by a fixed step at every reading), so the assertions are counts.
/// </summary>
public sealed class SliceBoundTests(ITestOutputHelper output)
{
    private const int PageblockPages = 64;

    /// <summary>24 MiB of 512 B blocks, three in four freed, on the given clock, caches off (a direct pass needs no
    /// drain).</summary>
    private static (NativeHeap heap, List<BlockHandle> live) Fragmented(TimeProvider clock, bool caches = false)
    {
        var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 128L << 20, PageblockPages = PageblockPages, Proactiveness = 0, TimeProvider = clock, WasteHighRatio = 0,
            DecommitDelay = TimeSpan.FromHours(1), PerThreadCaches = caches,
        });
        return (heap, TestHeaps.FillAndKeepAQuarter(heap, 24L << 20, 512));
    }

    private static void AssertIntact(NativeHeap heap, List<BlockHandle> live)
    {
        foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void UnderATimeBudgetAConsolidationBatchStopsFillingOnceItsWorkWouldPassTheBudget()
    {
        // Without a budget: one batch takes a pageblock's worth of source slabs.
        var free = new ManualTimeProvider();
        (NativeHeap whole, List<BlockHandle> wholeLive) = Fragmented(free);
        int wholeFirstBatch;
        using (whole)
        {
            int sources = 0;
            long barriersAtFirst = -1;
            whole.Compactor!.BetweenConsolidationSources = _ =>
            {
                if (barriersAtFirst < 0) barriersAtFirst = whole.GetStatistics().Compaction.Barriers;
                if (whole.GetStatistics().Compaction.Barriers == barriersAtFirst) sources++;
            };
            lock (whole.Compactor.RunLock) Assert.True(whole.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncLight }));
            wholeFirstBatch = sources;
            AssertIntact(whole, wholeLive);
        }

        // A budget of 2 ticks, and every source added moves the clock one tick (migration takes no time on it):
        // the batch stops after the second source, then the run stops (the budget is spent) and reports itself
        // unfinished; further calls resume and finish the classes.
        var clock = new ManualTimeProvider();
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(clock);
        using (heap)
        {
            int added = 0;
            heap.Compactor!.BetweenConsolidationSources = _ => { added++; clock.Advance(TimeSpan.FromTicks(1)); };
            long barriers = heap.GetStatistics().Compaction.Barriers;
            bool done;
            lock (heap.Compactor.RunLock)
                done = heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = 2, StartTicks = clock.GetTimestamp() });
            output.WriteLine($"unbudgeted first batch: {wholeFirstBatch} sources; budgeted first call: {added} sources");
            Assert.False(done, "the budget ran out before every class was consolidated");
            Assert.Equal(2, added);
            Assert.Equal(1, heap.GetStatistics().Compaction.Barriers - barriers);
            Assert.True(wholeFirstBatch > 2, $"an unbudgeted batch holds more ({wholeFirstBatch})");
            int calls = 1;
            while (!done && calls < 10_000)
            {
                lock (heap.Compactor.RunLock)
                    done = heap.Compactor.ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = 2, StartTicks = clock.GetTimestamp() });
                calls++;
            }
            output.WriteLine($"{calls} budgeted calls consolidated every class");
            Assert.True(done, "the budgeted calls advance and finish");
            heap.Compactor.BetweenConsolidationSources = null;
            AssertIntact(heap, live);
        }

        // The memory limit's slices fill whole batches under the same budget (WholeBatches): the first batch takes
        // what an unbudgeted one does, and only then does the spent budget stop the run.
        var limitClock = new ManualTimeProvider();
        (NativeHeap limited, List<BlockHandle> limitedLive) = Fragmented(limitClock);
        using (limited)
        {
            int added = 0;
            limited.Compactor!.BetweenConsolidationSources = _ => { added++; limitClock.Advance(TimeSpan.FromTicks(1)); };
            long barriers = limited.GetStatistics().Compaction.Barriers;
            lock (limited.Compactor.RunLock)
                Assert.False(limited.Compactor.ConsolidateSlabs(new CompactControl
                {
                    Mode = CompactMode.SyncLight, BudgetTicks = 2, StartTicks = limitClock.GetTimestamp(), WholeBatches = true,
                }));
            output.WriteLine($"whole batches under the budget: {added} sources");
            Assert.Equal(wholeFirstBatch, added);
            Assert.Equal(1, limited.GetStatistics().Compaction.Barriers - barriers);
            limited.Compactor.BetweenConsolidationSources = null;
            AssertIntact(limited, limitedLive);
        }
    }

    [Fact]
    public void AZonePassCutByItsBudgetInsideAPageblockResumesThereAndCompletes()
    {
        // Every reading of the clock spends the budget: each call moves one unit (one batch), then stops inside the
        // pageblock; the next call resumes at the first unit it left, so the pass still completes.
        var clock = new SteppingTimeProvider(TimeSpan.FromMilliseconds(1));
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(clock);
        using (heap)
        {
            TestHeaps.CommitFreeSpaceAbove(heap, 8);
            CompactStatus status = CompactStatus.BudgetExhausted;
            int calls = 0, mostBarriers = 0;
            var pageblocks = new HashSet<long>();
            Dictionary<BlockHandle, nint> before = live.ToDictionary(h => h, heap.CurrentAddress);
            for (bool first = true; status == CompactStatus.BudgetExhausted && calls < 100_000; first = false, calls++)
            {
                long barriers = heap.GetStatistics().Compaction.Barriers;
                lock (heap.Compactor!.RunLock)
                    status = heap.Compactor.CompactZone(new CompactControl { Mode = CompactMode.SyncLight, WholeZone = first, IgnoreSkipHint = true, BudgetTicks = 1 });
                mostBarriers = Math.Max(mostBarriers, (int)(heap.GetStatistics().Compaction.Barriers - barriers));
            }
            foreach (BlockHandle h in live)
                if (heap.CurrentAddress(h) != before[h]) pageblocks.Add((long)before[h] / (PageblockPages * 4096L));
            output.WriteLine($"{calls} calls, at most {mostBarriers} barriers in one; blocks moved out of {pageblocks.Count} pageblocks; ended {status}");
            Assert.True(status is CompactStatus.Complete or CompactStatus.NoTargets, $"the pass completes ({status})");
            Assert.Equal(1, mostBarriers);
            Assert.True(pageblocks.Count >= 2, "the pass moved blocks out of several pageblocks");
            Assert.True(calls > 2 * pageblocks.Count, $"pageblocks took several calls each ({calls} calls for {pageblocks.Count})");
            AssertIntact(heap, live);
        }
    }

    [Fact]
    public void AnIncrementalDrainStopsAtItsDeadlineAndResumesUntilEverythingIsDrained()
    {
        var clock = new ManualTimeProvider();
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(clock, caches: true);
        using (heap)
        {
            // Blocks of several classes freed on this thread fill its bins and spill into the depot.
            var more = new List<BlockHandle>();
            for (int i = 0; i < 20_000; i++) more.Add(heap.Allocate(16 + 16 * (i % 40)));
            more.ForEach(heap.Free);
            long cached = heap.Caches.CachedSlots();
            Assert.True(cached > 0, "the caches and the depot hold slots");

            // A deadline already passed: each call drains one non-empty cache or depot bin, then stops.
            var cursor = default(DrainCursor);
            int calls = 0;
            bool done = false;
            while (!done && calls < 10_000)
            {
                done = heap.Caches.DrainSome(ref cursor, clock, deadline: 0);
                calls++;
                Assert.False(heap.Caches.Disabled, "every step enables the caches again");
            }
            output.WriteLine($"{cached} cached slots drained in {calls} calls");
            Assert.True(done);
            Assert.True(calls > 2, $"the drain went in steps ({calls})");
            Assert.Equal(0, heap.Caches.CachedSlots());
            AssertIntact(heap, live);
        }
    }
}
