using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The waste-driven run's slices on the heap's injected clock (<see cref="HeapOptions.TimeProvider"/>): a slice yields
/// once its budget is spent, and a whole cycle completes in one wake when the budget is ample. The clocks here are
/// deterministic (one that never moves, one that moves a fixed step at every reading), so the assertions are counts,
/// never elapsed time.
/// </summary>
public sealed class DeterministicSliceTests(ITestOutputHelper output)
{
    private static (NativeHeap heap, List<BlockHandle> live) Fragmented(TimeProvider clock, int proactiveness = 0)
    {
        var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 128L << 20, PageblockPages = 64, Proactiveness = proactiveness, TimeProvider = clock,
            WasteHighRatio = 1.2, WasteLowRatio = 1.1, WasteMinBytes = 1L << 20, DecommitDelay = TimeSpan.FromHours(1),
            CompactionSliceTime = TimeSpan.FromMilliseconds(0.5),
        });
        return (heap, TestHeaps.FillAndKeepAQuarter(heap, 24L << 20, 512));
    }

    [Fact]
    public void ASliceYieldsOnceItsBudgetIsSpentAndACycleCompletesInOneWakeWhenTheBudgetIsAmple()
    {
        // Ample: a clock that never moves. The first wake's slice runs the whole cycle (every class consolidated, one
        // pass over the zone) and the run needs only a few more wakes to end.
        (NativeHeap ample, List<BlockHandle> ampleLive) = Fragmented(new ManualTimeProvider());
        long ampleFirst, ampleWakes;
        using (ample)
        {
            ample.RunCompactionStep(TimeSpan.Zero);
            ampleFirst = ample.GetStatistics().Compaction.WasteBytesMoved;
            int steps = 1;
            for (; steps < 100 && ample.BackgroundWasteRunActive(); steps++) ample.RunCompactionStep(TimeSpan.FromMilliseconds(steps));
            ampleWakes = ample.GetStatistics().Compaction.WasteWakes;
            foreach (BlockHandle h in ampleLive) Assert.Equal(0, TestHeaps.CountCorrupt(ample, h));
            ampleLive.ForEach(ample.Free);
        }

        // Spent at once: every reading of the clock moves it by 1 ms, twice the slice. Each wake's slice stops at its
        // first budget check, after one unit of work, so the same cycle takes many wakes.
        var stepping = new SteppingTimeProvider(TimeSpan.FromMilliseconds(1));
        (NativeHeap tight, List<BlockHandle> tightLive) = Fragmented(stepping);
        using (tight)
        {
            tight.RunCompactionStep(TimeSpan.Zero);
            long tightFirst = tight.GetStatistics().Compaction.WasteBytesMoved;
            int steps = 1;
            for (; steps < 5000 && tight.BackgroundWasteRunActive(); steps++) tight.RunCompactionStep(TimeSpan.FromMilliseconds(steps));
            CompactionStatistics c = tight.GetStatistics().Compaction;
            output.WriteLine($"ample: first wake moved {ampleFirst:N0} B, {ampleWakes} waste wakes; stepping clock: first wake moved {tightFirst:N0} B, {c.WasteWakes} waste wakes, {c.WasteBytesMoved:N0} B in all");
            Assert.True(ampleFirst > 0, "the first ample slice moved blocks");
            Assert.True(tightFirst < ampleFirst, $"a spent budget stops the slice early ({tightFirst} vs {ampleFirst})");
            Assert.True(tightFirst <= 2L << 20, $"one unit of work at most (a pageblock's worth of sources): {tightFirst}");
            Assert.True(c.WasteWakes > ampleWakes, $"the tight run took more wakes ({c.WasteWakes} vs {ampleWakes})");
            Assert.False(tight.BackgroundWasteRunActive(), "the tight run still ends: every slice advances");
            foreach (BlockHandle h in tightLive) Assert.Equal(0, TestHeaps.CountCorrupt(tight, h));
            tightLive.ForEach(tight.Free);
        }
    }

    /// <summary>While a waste-driven run is under way, a background wake is that run's slice and nothing else: the
    /// daemon's own consolidation (a pass of up to <see cref="HeapOptions.CompactionBudgetTime"/>, 2 ms, with the
    /// caches disabled) and the proactive pass wait until the run ends. Before, a wake ran both, up to 2.5 ms of
    /// work in one go, and a mutator that shared the compactor's core waited that long for it. The clock moves 0.1 ms
    /// at every reading: a slice of 0.5 ms stops after about five units of work (one barrier each), a 2 ms budget
    /// after about twenty.</summary>
    [Fact]
    public void AWakeDuringAWasteRunIsOneSliceOfWork()
    {
        var clock = new SteppingTimeProvider(TimeSpan.FromMilliseconds(0.1));
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(clock, proactiveness: 100);
        using (heap)
        {
            heap.RunCompactionStep(TimeSpan.Zero);   // starts the run
            Assert.True(heap.BackgroundWasteRunActive());
            long most = 0;
            int wakes = 0;
            for (int step = 1; step < 5000 && heap.BackgroundWasteRunActive(); step++, wakes++)
            {
                long before = heap.GetStatistics().Compaction.Barriers;
                heap.RunCompactionStep(TimeSpan.FromMilliseconds(step));
                most = Math.Max(most, heap.GetStatistics().Compaction.Barriers - before);
            }
            output.WriteLine($"{wakes} wakes while the run was active; at most {most} barriers in one");
            Assert.True(wakes > 0);
            Assert.True(most <= 8, $"a wake did {most} units of work; one slice of 0.5 ms at 0.1 ms per reading does about five");
            Assert.False(heap.BackgroundWasteRunActive(), "the run ends");
            foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            live.ForEach(heap.Free);
        }
    }

    /// <summary>The wake that starts a waste-driven run is that run's first slice and nothing else: the run is decided
    /// before the daemon's own work, which used to run first in that wake (a full drain of the caches and as much
    /// consolidation as its 2 ms budget allowed, about twenty units of work at 0.1 ms per reading).</summary>
    [Fact]
    public void TheWakeThatStartsAWasteRunIsOneSliceOfWork()
    {
        var clock = new SteppingTimeProvider(TimeSpan.FromMilliseconds(0.1));
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(clock, proactiveness: 100);
        using (heap)
        {
            Assert.False(heap.BackgroundWasteRunActive());
            CompactionStatistics before = heap.GetStatistics().Compaction;
            heap.RunCompactionStep(TimeSpan.Zero);
            CompactionStatistics after = heap.GetStatistics().Compaction;
            long barriers = after.Barriers - before.Barriers;
            output.WriteLine($"the first wake: {barriers} barriers, {after.WasteBytesMoved:N0} B moved by the run, {after.BytesMoved - before.BytesMoved:N0} B in all");
            Assert.True(heap.BackgroundWasteRunActive(), "the wake started the run");
            Assert.Equal(1, after.WasteWakes - before.WasteWakes);
            Assert.Equal(after.BytesMoved - before.BytesMoved, after.WasteBytesMoved - before.WasteBytesMoved);   // all of it the slice's
            Assert.True(barriers <= 8, $"the first wake did {barriers} units of work; one slice of 0.5 ms at 0.1 ms per reading does about five");
            foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            live.ForEach(heap.Free);
        }
    }
    /// <summary>Without a waste-driven run, the daemon's own pass (the consolidation of the classes worth it, then the
    /// proactive pass) is cut into slices as well: a wake does one slice of it and the next wake resumes it. It used to
    /// run for <see cref="HeapOptions.CompactionBudgetTime"/> (2 ms), or unbounded with no budget set, with the caches
    /// disabled. The clock moves 0.1 ms at every reading, so that a consolidation batch reads it past half a
    /// millisecond: a slice of 0.5 ms holds one batch, with the default budget or none, where the 2 ms budget held four
    /// and no budget all seventy in one wake. The caches stay on throughout; every wake advances, so the pass ends; and
    /// the next pass, on a heap fragmented again, starts with a drain of the caches.</summary>
    [Theory]
    [InlineData(2.0)]
    [InlineData(0.0)]
    public void TheDaemonsOwnPassIsOneSliceOfWorkPerWake(double budgetMs)
    {
        var clock = new SteppingTimeProvider(TimeSpan.FromMilliseconds(0.1));
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 128L << 20, PageblockPages = 64, Proactiveness = 20, TimeProvider = clock,
            WasteHighRatio = 0,   // the daemon's own pass alone
            DecommitDelay = TimeSpan.FromHours(1), CompactionSliceTime = TimeSpan.FromMilliseconds(0.5),
            CompactionBudgetBytes = 0, CompactionBudgetTime = TimeSpan.FromMilliseconds(budgetMs),
        });
        bool cachesOff = false;
        heap.Compactor!.BetweenConsolidationSources = _ => cachesOff |= heap.ThreadCachesDisabled;
        List<BlockHandle> live = TestHeaps.FillAndKeepAQuarter(heap, 24L << 20, 512);
        (int wakes, long moved, long most) = StepUntilIdle(heap);
        output.WriteLine($"budget {budgetMs} ms: {wakes} wakes, {moved:N0} B moved, at most {most} barriers in one wake");
        Assert.True(moved >= 4L << 20, $"the pass consolidated the classes: {moved} B moved");
        Assert.True(wakes > 3, $"the pass was cut into slices: {wakes} wakes");
        Assert.True(most <= 2, $"a wake did {most} units of work; one slice of 0.5 ms holds one batch at this clock");
        Assert.False(cachesOff, "the caches stayed on during the daemon's pass");

        // A second pass on a heap fragmented again, with this thread's cache holding slots: its first wake drains them.
        List<BlockHandle> more = TestHeaps.FillAndKeepAQuarter(heap, 8L << 20, 512);
        for (int i = 0; i < 100; i++) heap.Free(heap.Allocate(512));
        Assert.True(heap.CachedSlots() > 0);
        heap.RunCompactionStep(TimeSpan.FromSeconds(10));
        Assert.Equal(0, heap.CachedSlots());
        StepUntilIdle(heap);
        foreach (BlockHandle h in live.Concat(more)) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
        live.ForEach(heap.Free);
        more.ForEach(heap.Free);
    }

    /// <summary>The proactive half of the daemon's pass is sliced too, and shares the slice with a consolidation that
    /// has work: the zone pass advances in every wake (at least a pageblock), so the score falls below the high
    /// watermark (90) over many wakes, each one slice, while the classes are still being consolidated.</summary>
    [Fact]
    public void TheProactivePassAdvancesSliceBySliceBesideConsolidation()
    {
        var clock = new SteppingTimeProvider(TimeSpan.FromMilliseconds(0.1));
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 32L << 20, PageblockPages = 64, MovableZonePercent = 100, Proactiveness = 20, TimeProvider = clock,
            WasteHighRatio = 0, DecommitDelay = TimeSpan.FromHours(1), CompactionSliceTime = TimeSpan.FromMilliseconds(0.5),
            CompactionBudgetBytes = 0,
        });
        // Three quarters of every pageblock freed (the score above the high watermark, 90), and a size class worth
        // consolidating beside it.
        List<BlockHandle> small = TestHeaps.FillAndKeepAQuarter(heap, 1L << 20, 512);
        var runs = new List<BlockHandle>();
        while (heap.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) runs.Add(h);
        var kept = new List<BlockHandle>();
        for (int i = 0; i < runs.Count; i++)
            if (i % 4 != 0) heap.Free(runs[i]);
            else { kept.Add(runs[i]); TestHeaps.Fill(heap, runs[i]); }
        int before = heap.GetStatistics().FragmentationScore;
        Assert.True(before > 90, $"score {before}");
        int wakes = 0, scanningWakes = 0;
        long most = 0;
        for (; wakes < 5000 && heap.GetStatistics().FragmentationScore >= 90; wakes++)
        {
            CompactionStatistics s = heap.RunCompactionStep(TimeSpan.FromMilliseconds(wakes));
            most = Math.Max(most, s.Barriers);
            if (s.CompactDaemonMigrateScanned > 0) scanningWakes++;
        }
        int after = heap.GetStatistics().FragmentationScore;
        output.WriteLine($"score {before} -> {after} in {wakes} wakes ({scanningWakes} with the zone pass); at most {most} barriers in one wake");
        Assert.True(after < 90, $"score {after}: the proactive pass brought the score below the high watermark");
        Assert.True(wakes > 3, $"the pass was cut into slices: {wakes} wakes");
        Assert.True(scanningWakes * 2 >= wakes, $"the zone pass ran in {scanningWakes} of {wakes} wakes: consolidation starved it");
        Assert.True(most <= 8, $"a wake did {most} units of work");
        foreach (BlockHandle h in kept.Concat(small)) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    /// <summary>Runs background steps until one moves nothing after some have moved (the pass is done); the wakes, the
    /// bytes moved and the most barriers one wake issued.</summary>
    private static (int wakes, long moved, long most) StepUntilIdle(NativeHeap heap)
    {
        long most = 0, moved = 0;
        int wakes = 0;
        for (; wakes < 5000; wakes++)
        {
            CompactionStatistics s = heap.RunCompactionStep(TimeSpan.FromMilliseconds(wakes));
            most = Math.Max(most, s.Barriers);
            moved += s.BytesMoved;
            if (s.BytesMoved == 0 && moved > 0) break;   // the pass is done: nothing left worth moving
        }
        Assert.True(wakes < 5000, "the pass ended");
        return (wakes + 1, moved, most);
    }
}
