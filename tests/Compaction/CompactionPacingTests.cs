using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Engine;
using Compaction.Allocator.Os;

namespace Compaction.Tests;

/// <summary>
/// The background compactor's pacing by the process's CPU (<see cref="CompactionPacer"/>): a wake is charged the
/// process's CPU over it less the other threads' rate while the thread slept, or its thread's own CPU if more, and the
/// thread sleeps so that the charge over the wake and the sleep is the share. Every clock here is scripted (a manual
/// wall clock, CPU clocks whose readings the test sets or that move a fixed step at each reading), so every assertion
/// is on counts and on what the pacer decided, never on elapsed time.
/// </summary>
public sealed class CompactionPacingTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);   // a hang guard, not a measurement
    private const long Ms = 1_000_000;                                      // nanoseconds

    /// <summary>CPU clocks whose readings the test sets (nanoseconds; -1: no such clock).</summary>
    private sealed class SetCpuClock : CpuClock
    {
        public long Process, Thread;
        public override long ProcessNanoseconds() => Process;
        public override long ThreadNanoseconds() => Thread;
    }

    /// <summary>CPU clocks that move a fixed step at every reading: per wake (two readings of each, one at its start
    /// and one at its end) the process's clock moves <paramref name="processStep"/> and the thread's
    /// <paramref name="threadStep"/>, and as much again over each sleep.</summary>
    private sealed class SteppingCpuClock(long processStep, long threadStep) : CpuClock
    {
        private long _process, _thread;
        public override long ProcessNanoseconds() => Interlocked.Add(ref _process, processStep);
        public override long ThreadNanoseconds() => Interlocked.Add(ref _thread, threadStep);
    }

    /// <summary>A pacer whose thread slept <paramref name="sleepMs"/> while the other threads ran at
    /// <paramref name="othersRate"/> cores, and that now starts a wake.</summary>
    private static (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) AwakeAfter(double sleepMs, double othersRate)
    {
        var wall = new ManualTimeProvider();
        var cpu = new SetCpuClock();
        var pacer = new CompactionPacer(wall, cpu);
        pacer.MarkAsleep();
        wall.Advance(TimeSpan.FromMilliseconds(sleepMs));
        cpu.Process += (long)(othersRate * sleepMs * Ms);
        pacer.WakeStarting();
        return (pacer, wall, cpu);
    }

    /// <summary>The wake runs <paramref name="wallMs"/>: the thread uses <paramref name="threadMs"/>, the other threads
    /// <paramref name="othersMs"/>.</summary>
    private static WakeCharge Run(CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu, double wallMs, double threadMs, double othersMs)
    {
        wall.Advance(TimeSpan.FromMilliseconds(wallMs));
        if (cpu.Thread >= 0) cpu.Thread += (long)(threadMs * Ms);
        if (cpu.Process >= 0) cpu.Process += (long)((threadMs + othersMs) * Ms);
        return pacer.WakeEnded();
    }

    [Fact]
    public void AWakeWhoseOtherThreadsRunAtTheirOwnRateIsChargedItsThreadsCpu()
    {
        // The other threads ran half a core while the thread slept, and half a core through the 1 ms wake.
        (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) = AwakeAfter(sleepMs: 10, othersRate: 0.5);
        Assert.Equal(0.5, pacer.BaselineRate, 12);
        WakeCharge c = Run(pacer, wall, cpu, wallMs: 1, threadMs: 1, othersMs: 0.5);
        Assert.Equal(new WakeCharge(Wall: 1 * Ms, Thread: 1 * Ms, Process: 3 * Ms / 2, Baseline: Ms / 2, Charged: 1 * Ms), c);
        // At a tenth of a core: a cycle of 10 ms, the 1 ms wake and a 9 ms sleep.
        Assert.Equal(TimeSpan.FromMilliseconds(9), CompactionPacer.PacedDelay(c, 0.1));
    }

    [Fact]
    public void TheCpuAWakeMakesTheOtherThreadsSpendIsChargedToIt()
    {
        // As above, but the wake's barriers and frozen blocks cost the other threads 1.5 ms more than their own rate.
        (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) = AwakeAfter(sleepMs: 10, othersRate: 0.5);
        WakeCharge c = Run(pacer, wall, cpu, wallMs: 1, threadMs: 1, othersMs: 0.5 + 1.5);
        Assert.Equal(5 * Ms / 2, c.Charged);
        // A cycle of 25 ms at a tenth: the thread's own CPU alone would have slept 9 ms.
        Assert.Equal(TimeSpan.FromMilliseconds(24), CompactionPacer.PacedDelay(c, 0.1));
    }

    [Fact]
    public void AWakeIsChargedAtLeastItsThreadsCpuWhenTheOtherThreadsSlowedDown()
    {
        // The other threads ran a core while the thread slept but stopped during the wake (blocked, or descheduled):
        // the process's CPU beyond their rate is less than the thread's own, which is charged.
        (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) = AwakeAfter(sleepMs: 4, othersRate: 1);
        WakeCharge c = Run(pacer, wall, cpu, wallMs: 2, threadMs: 1.5, othersMs: 0);
        Assert.Equal(2 * Ms, c.Baseline);
        Assert.Equal(3 * Ms / 2, c.Charged);
    }

    [Fact]
    public void BeforeASleepIsMeasuredTheWholeProcessCpuOfAWakeIsCharged()
    {
        var wall = new ManualTimeProvider();
        var cpu = new SetCpuClock();
        var pacer = new CompactionPacer(wall, cpu);
        pacer.WakeStarting();   // no MarkAsleep: no sleep to measure the other threads by
        Assert.Equal(0, pacer.BaselineRate);
        WakeCharge c = Run(pacer, wall, cpu, wallMs: 1, threadMs: 0.25, othersMs: 0.75);
        Assert.Equal(1 * Ms, c.Charged);
    }

    [Fact]
    public void TheThreadsOwnCpuOverASleepIsNotCountedAsTheOtherThreads()
    {
        // Over a 10 ms sleep the process used 3 ms, 1 ms of it the thread's own (waking up): the others ran 0.2 cores.
        var wall = new ManualTimeProvider();
        var cpu = new SetCpuClock();
        var pacer = new CompactionPacer(wall, cpu);
        pacer.MarkAsleep();
        wall.Advance(TimeSpan.FromMilliseconds(10));
        cpu.Process += 3 * Ms;
        cpu.Thread += 1 * Ms;
        pacer.WakeStarting();
        Assert.Equal(0.2, pacer.BaselineRate, 12);
    }

    [Fact]
    public void TheOtherThreadsRateFollowsTheSleepsWithDecayingWeights()
    {
        // A 10 ms sleep at a whole core, then 10 ms sleeps at none: each later sleep keeps 7/8 of the earlier weight.
        (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) = AwakeAfter(sleepMs: 10, othersRate: 1);
        Assert.Equal(1.0, pacer.BaselineRate, 12);
        double others = 10, slept = 10;
        for (int i = 0; i < 3; i++)
        {
            Run(pacer, wall, cpu, wallMs: 1, threadMs: 1, othersMs: 0);
            wall.Advance(TimeSpan.FromMilliseconds(10));
            pacer.WakeStarting();
            others *= CompactionPacer.BaselineDecay;
            slept = slept * CompactionPacer.BaselineDecay + 10;
            Assert.Equal(others / slept, pacer.BaselineRate, 12);
        }
        Assert.True(pacer.BaselineRate < 0.5, $"three quiet sleeps bring the rate under half a core ({pacer.BaselineRate})");
    }

    [Fact]
    public void WithoutAProcessClockAWakeIsChargedItsThreadsCpuAndWithoutEitherItsWallTime()
    {
        (CompactionPacer pacer, ManualTimeProvider wall, SetCpuClock cpu) = AwakeAfter(sleepMs: 10, othersRate: 0);
        cpu.Process = -1;
        WakeCharge threadOnly = Run(pacer, wall, cpu, wallMs: 2, threadMs: 1, othersMs: 0);
        Assert.Equal((-1, 1 * Ms), (threadOnly.Process, threadOnly.Charged));

        cpu.Thread = -1;
        pacer.WakeStarting();
        WakeCharge neither = Run(pacer, wall, cpu, wallMs: 2, threadMs: 0, othersMs: 0);
        Assert.Equal((-1L, -1L, 2 * Ms), (neither.Process, neither.Thread, neither.Charged));
        // The wall time's pacing: a 2 ms wake at a tenth of a core sleeps 18 ms.
        Assert.Equal(TimeSpan.FromMilliseconds(18), CompactionPacer.PacedDelay(neither, 0.1));
    }

    [Fact]
    public void APacedSleepIsAtLeastTheMinimum()
    {
        // A wake preempted for longer than its charge over the share (10 ms of wall time for 0.1 ms of CPU at a
        // tenth) would sleep a negative time: it sleeps the minimum.
        var c = new WakeCharge(Wall: 10 * Ms, Thread: Ms / 10, Process: Ms / 10, Baseline: 0, Charged: Ms / 10);
        Assert.Equal(CompactionPacer.MinimumDelay, CompactionPacer.PacedDelay(c, 0.1));
    }

    private static NativeHeap FragmentedHeap(ManualTimeProvider clock, CpuClock cpu, List<BlockHandle> live)
    {
        var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 128L << 20, PageblockPages = 64, Proactiveness = 0, TimeProvider = clock, CpuClock = cpu,
            CompactionInterval = TimeSpan.FromMilliseconds(1), CompactionCpuShare = 0.1,
            WasteHighRatio = 1.2, WasteLowRatio = 1.1, WasteMinBytes = 1L << 20, DecommitDelay = TimeSpan.FromHours(1),
        });
        var all = new List<BlockHandle>();
        for (long b = 0; b < (24L << 20); b += 512) all.Add(heap.Allocate(512));
        for (int i = 0; i < all.Count; i++)
        {
            if (i % 4 != 0) heap.Free(all[i]);
            else { live.Add(all[i]); TestHeaps.Fill(heap, all[i]); }
        }
        return heap;
    }

    private static void WaitUntilAsleep(ManualTimeProvider clock, int arms) =>
        Assert.True(SpinWait.SpinUntil(() => clock.Arms >= arms, Patience), $"the background thread did not go back to sleep ({clock.Arms} of {arms} arms)");

    [Theory]
    [InlineData(2 * Ms, Ms / 2, 20)]     // the process spends 2 ms per wake, the thread 0.5 ms: 2 ms is charged
    [InlineData(Ms / 2, Ms / 2, 5)]      // the process spends only the thread's 0.5 ms: that is charged
    public void TheBackgroundThreadSleepsWhatThePacersChargeAtTheShareAllows(long processStep, long threadStep, int sleepMs)
    {
        // The wall clock never moves during a wake (the test advances it only while the thread sleeps), so a wake's
        // charge is the process's CPU over it, and the sleep after a waste slice is charge / share, the share being
        // the configured one divided by the run's back-off (a cycle that gave back little halves it).
        var clock = new ManualTimeProvider();
        var live = new List<BlockHandle>();
        using NativeHeap heap = FragmentedHeap(clock, new SteppingCpuClock(processStep, threadStep), live);
        heap.StartBackgroundCompaction();
        WaitUntilAsleep(clock, 1);
        clock.Advance(TimeSpan.FromMilliseconds(1));   // the first wake, at the interval: the waste-driven run starts
        WaitUntilAsleep(clock, 2);
        Assert.True(heap.BackgroundWasteRunActive(), "the first slice left the run under way");
        Assert.Equal(1, heap.GetStatistics().Compaction.WasteWakes);

        for (int wake = 2; wake <= 4 && heap.BackgroundWasteRunActive(); wake++)
        {
            TimeSpan paced = TimeSpan.FromMilliseconds(sleepMs) * heap.Compactor!.WasteShareDivisor;   // read while the thread sleeps
            clock.Advance(paced - TimeSpan.FromTicks(1));
            Assert.Equal(wake, clock.Arms);   // not yet due: the thread still sleeps
            clock.Advance(TimeSpan.FromTicks(1));
            WaitUntilAsleep(clock, wake + 1);
            CompactionStatistics s = heap.GetStatistics().Compaction;
            Assert.Equal(wake, s.CompactDaemonWake);
            Assert.Equal(wake * processStep, s.BackgroundChargedCpuNanoseconds);
            Assert.Equal(wake * threadStep, s.BackgroundCpuNanoseconds);
        }
        heap.StopBackgroundCompaction();
        foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
    }

    /// <summary>The daemon's own pass, once it spans wakes, is paced like a waste-driven run: the next slice comes
    /// after the wake's charge over the share (here 2 ms at a tenth: 20 ms), not after <c>CompactionInterval</c> (10 s
    /// here), which would stretch a pass of many slices over minutes. The bytes budget stops each wake after a batch.</summary>
    [Fact]
    public void ADaemonPassUnderWayIsPacedByTheShareNotTheInterval()
    {
        var clock = new ManualTimeProvider();
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 128L << 20, PageblockPages = 64, Proactiveness = 0, TimeProvider = clock, CpuClock = new SteppingCpuClock(2 * Ms, Ms / 2),
            CompactionInterval = TimeSpan.FromSeconds(10), CompactionCpuShare = 0.1, CompactionBudgetBytes = 64 << 10,
            WasteHighRatio = 0,   // the daemon's own pass alone: consolidation of the class below
            DecommitDelay = TimeSpan.FromHours(1),
        });
        List<BlockHandle> live = TestHeaps.FillAndKeepAQuarter(heap, 24L << 20, 512);
        heap.StartBackgroundCompaction();
        WaitUntilAsleep(clock, 1);
        clock.Advance(TimeSpan.FromSeconds(10));   // the first wake, at the interval: the pass starts
        WaitUntilAsleep(clock, 2);
        long first = heap.GetStatistics().Compaction.BytesMoved;
        Assert.True(first > 0, "the first wake moved blocks");
        Assert.True(heap.Compactor!.DaemonPassUnderWay, "the bytes budget left the pass under way");
        clock.Advance(TimeSpan.FromMilliseconds(20) - TimeSpan.FromTicks(1));
        Assert.Equal(2, clock.Arms);   // not yet due: the thread still sleeps
        clock.Advance(TimeSpan.FromTicks(1));
        WaitUntilAsleep(clock, 3);
        CompactionStatistics s = heap.GetStatistics().Compaction;
        Assert.Equal(2, s.CompactDaemonWake);
        Assert.True(s.BytesMoved > first, "the second slice went on with the pass");
        heap.StopBackgroundCompaction();
        foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
    }
}
