using System.Diagnostics;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Os;

namespace Compaction.Bench.Scenarios;

/// <summary>
/// Scenario 4, mutator latency during background compaction: mutator threads pin a block of the fragmented heap,
/// write its first bytes, unpin, then allocate and free a small block, in a loop, while compaction works on the heap;
/// every pin and every allocation is timed (Stopwatch ticks), and so is every whole iteration and the gap from one
/// iteration's start to the next (the longest gap is the longest a mutator went without finishing an operation).
/// The baseline is the same mutators on the same kind of heap with no compactor running. Beside the latencies, each
/// window's process CPU time (all threads) over its wall time, against the same window without compaction, and the
/// process-wide barriers per MiB moved.
/// </summary>
/// <remarks>
/// Two compactors: <em>stepped</em>, this scenario's copy of a background loop that runs
/// <see cref="NativeHeap.RunCompactionStep"/> every 1 ms (the proactive pass with its budget; no CPU pacing), so that
/// it can tell when a wake found nothing to do without polling the heap's statistics (which take every lock); and
/// the heap's own <em>background thread</em> (<see cref="NativeHeap.StartBackgroundCompaction"/>, proactive trigger
/// off), whose waste-driven run compacts in 0.5 ms slices paced to <see cref="HeapOptions.CompactionCpuShare"/> of
/// the process's CPU. Compaction ends when the heap is compacted, so the run is a series of rounds: with the
/// mutators parked, the heap is fragmented afresh (refilled, 3/4 freed at random), then the compactor and the
/// mutators run until the stepped loop has had nothing to do for 5 wakes in a row or the background thread's waste
/// run has ended; only that window is measured. A <em>paced</em> mutator does 64 iterations then sleeps 1 ms (a
/// service under moderate load, a few percent of a core), so that the CPU the compactor makes the process spend shows
/// in the process's total instead of being hidden in a mutator that runs flat out either way.
/// </remarks>
public static unsafe class MutatorLatencyScenario
{
    private const int IdleWakesToEndRound = 5;
    private const int PacedBurst = 64;
    /// <summary>A baseline's longest gap above this (µs) is the scheduler's, not the heap's: the gap goal is not judged.</summary>
    private const double PreemptedGapUs = 5000;

    private enum Driver
    {
        /// <summary>No compaction: the baseline.</summary>
        None,
        /// <summary>This scenario's loop of RunCompactionStep every interval.</summary>
        Stepped,
        /// <summary>The heap's background thread, its waste-driven run paced to the CPU share.</summary>
        Thread,
    }

    private sealed record Config(string Name, int Mutators, Driver Driver, long BudgetBytes, TimeSpan BudgetTime, bool Paced = false,
                                 bool ThreadClockOnly = false)
    {
        public bool Compaction => Driver != Driver.None;
    }

    private sealed class Result(Config config)
    {
        public Config Config { get; } = config;
        public LatencyHistogram Pin { get; } = new();
        public LatencyHistogram Alloc { get; } = new();
        public LatencyHistogram Iteration { get; } = new();
        public LatencyHistogram Gap { get; } = new();
        public double MeasuredSeconds;
        public int Rounds;
        public long BytesMoved, Barriers, Wakes, BusyWakes, LongestStepTicks, LiveBytes;
        public long ProcessCpuNs, ThreadCpuNs, ChargedCpuNs, WasteBackoffs;
        public int RoundsEndedIdle;
        public int Corrupt;

        /// <summary>The process's CPU over the windows, in cores (1 = one core busy all the time), or NaN without a clock.</summary>
        public double ProcessCores => ProcessCpuNs < 0 ? double.NaN : ProcessCpuNs / 1e9 / MeasuredSeconds;
        public double IterationsPerSecond => Iteration.Count / MeasuredSeconds;
        public double BarriersPerMib => BytesMoved == 0 ? double.NaN : Barriers / (BytesMoved / (1024.0 * 1024));
    }

    public static ScenarioReport Run(CompactionBenchOptions o)
    {
        long arena = o.Quick ? 64L << 20 : 256L << 20;
        double measureSeconds = o.Quick ? 0.3 : 2.0;
        int maxRounds = o.Quick ? 2 : 12;
        TimeSpan interval = TimeSpan.FromMilliseconds(1);
        const int fillPercent = 90;   // of the movable zone, so that its pageblocks are all in use before the frees
        Func<Random, int> small = SizeMix.LogUniform(16, 1024), runs = SizeMix.Uniform(48 * 1024, 80 * 1024);
        Func<Random, int> sizes = SizeMix.Mixed(SizeMix.HalfTheBytes((1024 - 16) / Math.Log(64), 64 * 1024), small, runs);
        var d = new HeapOptions();
        Config[] configs =
        [
            new("no compaction, 2 mutators", 2, Driver.None, 0, TimeSpan.Zero),
            new("stepped, default budget, 2 mutators", 2, Driver.Stepped, d.CompactionBudgetBytes, d.CompactionBudgetTime),
            new("stepped, no budget, 2 mutators", 2, Driver.Stepped, 0, TimeSpan.Zero),
            new("background thread, 2 mutators", 2, Driver.Thread, 0, TimeSpan.Zero),
            new("no compaction, 1 mutator", 1, Driver.None, 0, TimeSpan.Zero),
            new("stepped, default budget, 1 mutator", 1, Driver.Stepped, d.CompactionBudgetBytes, d.CompactionBudgetTime),
            new("background thread, 1 mutator", 1, Driver.Thread, 0, TimeSpan.Zero),
            new("background thread, own-thread pacing, 1 mutator", 1, Driver.Thread, 0, TimeSpan.Zero, ThreadClockOnly: true),
            new("no compaction, 1 paced mutator", 1, Driver.None, 0, TimeSpan.Zero, Paced: true),
            new("background thread, 1 paced mutator", 1, Driver.Thread, 0, TimeSpan.Zero, Paced: true),
            new("background thread, own-thread pacing, 1 paced mutator", 1, Driver.Thread, 0, TimeSpan.Zero, Paced: true, ThreadClockOnly: true),
        ];

        // Each run goes through every configuration once, its baselines included, on seed Seed + run; a figure is the
        // median of the runs' figures, and a figure against a baseline is taken within each run, then its median.
        int repeats = o.Repeat;
        Runs[] all = configs.Select(c => new Runs(c)).ToArray();
        for (int run = 0; run < repeats; run++)
        {
            foreach (Runs set in all)
            {
                Config c = set.Config;
                var options = new HeapOptions
                {
                    ArenaBytes = arena, CompactionInterval = interval, CompactionBudgetBytes = c.BudgetBytes, CompactionBudgetTime = c.BudgetTime,
                    DecommitDelay = TimeSpan.FromHours(1),
                };
                if (c.Driver == Driver.Thread)
                {
                    // Only the waste-driven run: no proactive pass at the interval wakes, which are frequent so that the
                    // run starts soon after the window opens.
                    options.Proactiveness = 0;
                    options.CompactionInterval = TimeSpan.FromMilliseconds(5);
                    // The pacing without the process's clock, for comparison: each wake is charged its thread's CPU only.
                    if (c.ThreadClockOnly) options.CpuClock = ThreadClockOnly.Instance;
                }
                long fill = arena * options.MovableZonePercent / 100 * fillPercent / 100;
                Result r = RunConfig(c, options, o.Seed + run, fill, sizes, measureSeconds, maxRounds);
                set.Each.Add(r);
                Print(r, repeats > 1 ? $"run {run + 1}/{repeats}, " : "");
            }
        }

        static void Print(Result r, string run) =>
            Console.WriteLine($"  {run}{r.Config.Name}: {r.Rounds} round(s), {r.MeasuredSeconds:F2} s, {r.Pin.Count:N0} iterations; " +
                              $"pin p99.9 {Stats.Us(r.Pin.Percentile(99.9)):F2} us max {Stats.Us(r.Pin.Max):F0} us; " +
                              $"alloc p99.9 {Stats.Us(r.Alloc.Percentile(99.9)):F2} us p99.99 {Stats.Us(r.Alloc.Percentile(99.99)):F2} us max {Stats.Us(r.Alloc.Max):F0} us; " +
                              $"longest stall {Stats.Us(r.Iteration.Max):F0} us, gap {Stats.Us(r.Gap.Max):F0} us; moved {Fmt.Mib(r.BytesMoved)}, " +
                              $"{r.Barriers:N0} barriers; process {r.ProcessCores:F3} cores, thread {r.ThreadCpuNs / 1e9 / r.MeasuredSeconds:F3}, " +
                              $"charged {r.ChargedCpuNs / 1e9 / r.MeasuredSeconds:F3}; {r.BusyWakes}/{r.Wakes} busy wakes, " +
                              $"longest wake {Stats.Us(r.LongestStepTicks) / 1000:F1} ms; {r.Corrupt} corrupt");

        var rep = new ScenarioReport
        {
            Name = "latency",
            Title = "4. Mutator latency during background compaction",
            Setup = $"A {arena >> 20} MiB heap (75% movable zone) is filled to {fillPercent}% of its movable zone with written movable blocks (16 B-1 KiB and 48-80 KiB, half the bytes each) and 3/4 " +
                    "are freed at random. Each mutator thread loops: pin a random survivor of its share (a `PinScope`), write its first 64 bytes, unpin; " +
                    "allocate a 16-256 B movable block and free it. Timed: the `Pin` call, the `TryAllocate` call, the whole iteration (longest stall), and " +
                    "the gap from one iteration's start to the next one's (longest gap: everything the mutator waited for between two operations, its own bookkeeping included). " +
                    $"*Paced* mutators sleep 1 ms after every {PacedBurst} iterations (the sleep is not a gap). " +
                    $"*Stepped*: a compactor thread wakes every {interval.TotalMilliseconds} ms and runs `RunCompactionStep` (proactiveness {d.Proactiveness}, " +
                    $"default budget {Fmt.Mib(d.CompactionBudgetBytes)} / {d.CompactionBudgetTime.TotalMilliseconds} ms per wake, or none; every wake is also cut to the {d.CompactionSliceTime.TotalMilliseconds} ms slice, " +
                    "and while the waste-driven run is on, each wake is its slice). " +
                    $"*Background thread*: the heap's own (`StartBackgroundCompaction`, proactiveness 0, interval 5 ms), whose waste-driven run compacts in " +
                    $"{d.CompactionSliceTime.TotalMilliseconds} ms slices paced to `CompactionCpuShare` = {d.CompactionCpuShare} of the process's CPU; " +
                    "*own-thread pacing*: the same with the process's CPU clock hidden from it, so that each wake is charged only its own thread's CPU. The heap is " +
                    $"refragmented for each round and a round's window ends after {IdleWakesToEndRound} idle stepped wakes, when the waste run ends, or when {measureSeconds} s are measured " +
                    $"in all (at most {maxRounds} rounds). Baselines run the same mutators for {measureSeconds} s on a fragmented heap with no compactor. " +
                    "Every configuration warms up first (the mutators for 0.1 s, and one unmeasured round of its compactor), so that the runtime's tiered compiler is done with the paths measured. " +
                    "Survivors are verified byte for byte after every round. " +
                    (repeats > 1
                        ? $"**{repeats} runs** of every configuration (seeds {o.Seed}..{o.Seed + repeats - 1}; a run goes through all of them in turn): each figure is the median of the runs' " +
                          "figures (a maximum is the median of the runs' maxima), a figure against a baseline is taken within each run before its median, the summary adds the runs' " +
                          "range in brackets, and *Corrupt* is the total."
                        : "One run of every configuration (`--repeat N` runs them N times and reports medians)."),
        };
        var table = new MarkdownTable("<Configuration", "Measured s", "Rounds", "Iterations / s", "Pin p99 µs", "Pin p99.9 µs", "Pin p99.99 µs", "Pin max µs",
                                      "Alloc p99 µs", "Alloc p99.9 µs", "Alloc p99.99 µs", "Alloc max µs", "Longest stall µs", "Longest gap µs", "Corrupt");
        foreach (Runs r in all)
        {
            table.Add(r.Config.Name, Fmt.F(r.Median(x => x.MeasuredSeconds), 2), Fmt.F(r.Median(x => x.Rounds), 1), Fmt.N((long)r.Median(x => x.IterationsPerSecond)),
                      Fmt.Us(r.Median(x => Stats.Us(x.Pin.Percentile(99)))), Fmt.Us(r.Median(x => Stats.Us(x.Pin.Percentile(99.9)))),
                      Fmt.Us(r.Median(x => Stats.Us(x.Pin.Percentile(99.99)))), Fmt.Us(r.Median(x => Stats.Us(x.Pin.Max))),
                      Fmt.Us(r.Median(x => Stats.Us(x.Alloc.Percentile(99)))), Fmt.Us(r.Median(x => Stats.Us(x.Alloc.Percentile(99.9)))),
                      Fmt.Us(r.Median(x => Stats.Us(x.Alloc.Percentile(99.99)))), Fmt.Us(r.Median(x => Stats.Us(x.Alloc.Max))),
                      Fmt.Us(r.Median(x => Stats.Us(x.Iteration.Max))), Fmt.Us(r.Median(x => Stats.Us(x.Gap.Max))), Fmt.N(r.Each.Sum(x => x.Corrupt)));
            rep.CorruptBlocks += r.Each.Sum(x => x.Corrupt);
        }
        rep.Tables.Add(table);

        var cost = new MarkdownTable("<Configuration", "Moved MiB", "Barriers", "Barriers / MiB", "Busy / all wakes", "Longest wake ms",
                                     "Process CPU cores", "Baseline cores", "Process CPU above baseline", "Thread's own CPU", "Charged CPU", "Configured share", "Share back-offs");
        foreach (Runs r in all.Where(r => r.Config.Compaction))
        {
            Runs b = BaselineOf(all, r);
            bool paced = r.Config.Driver == Driver.Thread, stepped = r.Config.Driver == Driver.Stepped;
            cost.Add(r.Config.Name, Fmt.F(r.Median(x => x.BytesMoved / (1024.0 * 1024))), Fmt.N((long)r.Median(x => x.Barriers)), Fmt.F(r.Median(x => x.BarriersPerMib), 2),
                     stepped ? $"{Fmt.N((long)r.Median(x => x.BusyWakes))} / {Fmt.N((long)r.Median(x => x.Wakes))}" : "-",
                     stepped ? Fmt.F(r.Median(x => Stats.Us(x.LongestStepTicks) / 1000)) : "-",
                     Fmt.F(r.Median(x => x.ProcessCores), 3), Fmt.F(b.Median(x => x.ProcessCores), 3),
                     Fmt.Pct(r.Against(b, (x, y) => 100 * (x.ProcessCores - y.ProcessCores)).Median),
                     paced ? Fmt.Pct(r.Median(x => 100 * x.ThreadCpuNs / 1e9 / x.MeasuredSeconds)) : "-",
                     paced ? Fmt.Pct(r.Median(x => 100 * x.ChargedCpuNs / 1e9 / x.MeasuredSeconds)) : "-",
                     paced ? Fmt.Pct(100 * d.CompactionCpuShare) : "none",
                     paced ? Fmt.F(r.Median(x => x.WasteBackoffs), 1) : "-");
        }
        rep.Tables.Add(cost);

        foreach (Runs r in all.Where(r => r.Config.Compaction))
        {
            Runs b = BaselineOf(all, r);
            string what = r.Config.Name;
            bool oneMutator = r.Config.Mutators == 1 && !r.Config.Paced;
            Spread baseAlloc = b.Of(x => Stats.Us(x.Alloc.Percentile(99.9))), alloc = r.Of(x => Stats.Us(x.Alloc.Percentile(99.9)));
            Spread allocRatio = r.Against(b, (x, y) => Stats.Us(x.Alloc.Percentile(99.9)) / Stats.Us(y.Alloc.Percentile(99.9)));
            rep.Summary.Add(new SummaryRow("4. Mutator latency", $"allocate p99.9 µs ({what})", baseAlloc.Show(Fmt.Us), alloc.Show(Fmt.Us),
                                           allocRatio.Show(Fmt.X), oneMutator ? "<= 10 µs" : "-", oneMutator ? alloc.Median <= 10 : null));
            // A baseline whose own longest gap is several milliseconds was preempted (a loaded machine): the goal,
            // compaction adding at most 1 ms to the longest gap, cannot be judged against it.
            Spread baseGap = b.Of(x => Stats.Us(x.Gap.Max)), gap = r.Of(x => Stats.Us(x.Gap.Max));
            Spread added = r.Against(b, (x, y) => Stats.Us(x.Gap.Max) - Stats.Us(y.Gap.Max));
            bool judged = baseGap.Median <= PreemptedGapUs;
            rep.Summary.Add(new SummaryRow("4. Mutator latency", $"longest gap µs ({what})", baseGap.Show(Fmt.Us), gap.Show(Fmt.Us),
                                           added.Show(Signed),
                                           judged ? "<= baseline + 1 ms" : "<= baseline + 1 ms (baseline preempted: not judged)",
                                           judged ? added.Median <= 1000 : null));
            if (r.Config.Driver == Driver.Thread)
            {
                double goal = 100 * d.CompactionCpuShare + 2;
                Spread above = r.Against(b, (x, y) => 100 * (x.ProcessCores - y.ProcessCores));
                rep.Summary.Add(new SummaryRow("4. Mutator latency", $"process CPU above baseline, % of a core ({what})", b.Of(x => x.ProcessCores * 100).Show(v => Fmt.F(v, 1)),
                                               r.Of(x => x.ProcessCores * 100).Show(v => Fmt.F(v, 1)), above.Show(Fmt.Pct), $"<= {Fmt.Pct(goal)}",
                                               r.Config.Mutators < Environment.ProcessorCount ? above.Median <= goal : null));
            }
        }
        static string Signed(double us) => (us >= 0 ? "+" : "-") + Fmt.Us(Math.Abs(us));

        rep.Notes.Add($"The machine has {Environment.ProcessorCount} cores: with 2 mutators and the compactor there are more runnable threads than cores, " +
                      "so the scheduler's time slices (milliseconds) show up in the maxima; the 1-mutator rows keep the threads within the cores. " +
                      "With 2 mutators running flat out the process already uses every core, so its CPU cannot grow with compaction (the CPU goal is not judged there): " +
                      "what compaction costs them shows as iterations per second instead.");
        rep.Notes.Add("Process CPU: the process's CPU clock (all threads, user and kernel) over each measured window, as a share of one core; *above baseline* is " +
                      "that less the same mutators' figure without compaction. *Thread's own CPU* is `BackgroundCpuNanoseconds` over the windows, *charged CPU* " +
                      "`BackgroundChargedCpuNanoseconds` (what paces the run: the process's CPU over each wake beyond the other threads' rate while the thread slept). " +
                      "A mutator running flat out spends its whole core with or without compaction, so what the barriers cost it shows as fewer iterations, not as CPU; " +
                      "the paced mutator leaves its core mostly idle, so there the process's figure carries the whole cost.");
        foreach (Runs r in all.Where(r => r.Config.Driver == Driver.Stepped && r.Each.Any(x => x.RoundsEndedIdle < x.Rounds)))
            rep.Notes.Add($"{r.Config.Name}: the compactor never had {IdleWakesToEndRound} idle wakes in a row in {r.Each.Sum(x => x.Rounds - x.RoundsEndedIdle)} of " +
                          $"{r.Each.Sum(x => x.Rounds)} round(s) over {repeats} run(s): it moved {Fmt.Mib(r.Each.Sum(x => x.BytesMoved))} in {r.Each.Sum(x => x.MeasuredSeconds):F1} s " +
                          $"for {Fmt.Mib(r.Each[^1].LiveBytes)} live ({r.Each.Sum(x => x.BusyWakes):N0} of {r.Each.Sum(x => x.Wakes):N0} wakes did work).");
        foreach (Runs r in all.Where(r => r.Config.Driver == Driver.Thread && r.Each.Any(x => x.RoundsEndedIdle < x.Rounds)))
            rep.Notes.Add($"{r.Config.Name}: the waste run had not ended when the measured time was up in {r.Each.Sum(x => x.Rounds - x.RoundsEndedIdle)} of " +
                          $"{r.Each.Sum(x => x.Rounds)} round(s) over {repeats} run(s) (it moved {Fmt.Mib(r.Each.Sum(x => x.BytesMoved))} in " +
                          $"{r.Each.Sum(x => x.MeasuredSeconds):F1} s for {Fmt.Mib(r.Each[^1].LiveBytes)} live).");
        BarrierProbe(rep, o.Quick ? 0.3 : 1.0);
        rep.Notes.Add("Percentiles come from a log-linear histogram (within 1.6%); maxima are exact. Stopwatch ticks are nanoseconds here.");
        return rep;
    }

    /// <summary>The OS's thread CPU clock and no process clock: the background thread's pacing then charges each wake
    /// its own thread's CPU (how it was paced before it read the process's clock).</summary>
    private sealed class ThreadClockOnly : CpuClock
    {
        public static readonly ThreadClockOnly Instance = new();
        public override long ProcessNanoseconds() => -1;
        public override long ThreadNanoseconds() => ThreadCpuClock.Nanoseconds();
    }

    /// <summary>The configuration without compaction with the same mutators.</summary>
    private static Runs BaselineOf(Runs[] all, Runs r) =>
        all.First(x => !x.Config.Compaction && x.Config.Mutators == r.Config.Mutators && x.Config.Paced == r.Config.Paced);

    /// <summary>One configuration's results, one per run, in the order of the runs.</summary>
    private sealed class Runs(Config config)
    {
        public Config Config { get; } = config;
        public List<Result> Each { get; } = [];

        /// <summary>The median over the runs of <paramref name="figure"/>.</summary>
        public double Median(Func<Result, double> figure) => Stats.Median(Each.Select(figure));

        /// <summary><paramref name="figure"/> of each run.</summary>
        public Spread Of(Func<Result, double> figure) => new(Each.Select(figure).ToArray());

        /// <summary><paramref name="figure"/> of each run against the same run of <paramref name="baseline"/> (a ratio or
        /// a difference within one run, so that both sides saw the same machine load).</summary>
        public Spread Against(Runs baseline, Func<Result, Result, double> figure) =>
            new(Each.Select((x, k) => figure(x, baseline.Each[k])).ToArray());
    }

    /// <summary>One figure over the runs: its median, and the range where there was more than one run.</summary>
    private readonly record struct Spread(double[] Values)
    {
        public double Median => Stats.Median(Values);

        /// <summary>"median (min to max)", or the median alone for one run.</summary>
        public string Show(Func<double, string> format) =>
            Values.Length > 1 ? $"{format(Median)} ({format(Values.Min())} to {format(Values.Max())})" : format(Median);
    }

    /// <summary>
    /// What one <see cref="Interlocked.MemoryBarrierProcessWide"/> (the membarrier system call the migration protocol
    /// issues per batch, and the cache drain per run) costs another thread that is running: one thread reads the clock
    /// in a loop and records every gap; another issues a barrier every 200 µs. Reported: gaps over 5 µs per barrier
    /// and their size, against the same loop with no barriers.
    /// </summary>
    private static void BarrierProbe(ScenarioReport rep, double seconds)
    {
        var table = new MarkdownTable("<Clock-reading thread while another thread...", "Barriers / s", "Gaps > 5 µs / s", "Extra gaps per barrier",
                                      "Median gap > 5 µs", "p90 gap > 5 µs", "Barrier cost to the caller µs (median)");
        double quietRate = 0;
        foreach (bool barriers in (ReadOnlySpan<bool>)[false, true])
        {
            var gaps = new List<double>(1 << 16);   // never grows in the loop: growing would itself make a gap
            var costs = new List<double>(1 << 16);
            bool stop = false;
            var victim = new Thread(() =>
            {
                long threshold = Stopwatch.Frequency * 5 / 1_000_000, prev = Stopwatch.GetTimestamp();
                while (!Volatile.Read(ref stop))
                {
                    long now = Stopwatch.GetTimestamp();
                    if (now - prev > threshold && gaps.Count < gaps.Capacity) gaps.Add(Stats.Us(now - prev));
                    prev = now;
                }
            })
            { IsBackground = true, Name = "barrier probe" };
            victim.Start();
            Thread.Sleep(20);
            long end = Stopwatch.GetTimestamp() + (long)(seconds * Stopwatch.Frequency), period = Stopwatch.Frequency / 5000;
            int count = 0;
            while (Stopwatch.GetTimestamp() < end)
            {
                long next = Stopwatch.GetTimestamp() + period;
                while (Stopwatch.GetTimestamp() < next) Thread.SpinWait(20);
                if (!barriers) continue;
                long t0 = Stopwatch.GetTimestamp();
                Interlocked.MemoryBarrierProcessWide();
                if (costs.Count < costs.Capacity) costs.Add(Stats.Us(Stopwatch.GetTimestamp() - t0));
                count++;
            }
            Volatile.Write(ref stop, true);
            victim.Join();
            double rate = gaps.Count / seconds, barrierRate = count / seconds;
            if (!barriers) quietRate = rate;
            table.Add(barriers ? "issues a process-wide barrier every 200 µs" : "spins, no barriers", Fmt.F(barrierRate, 0), Fmt.F(rate, 0),
                      barriers ? Fmt.F((rate - quietRate) / Math.Max(1, barrierRate), 2) : "-", Fmt.Us(Stats.Median(gaps)), Fmt.Us(Stats.Percentile(gaps, 90)),
                      barriers ? Fmt.Us(Stats.Median(costs)) : "-");
            Console.WriteLine($"  barrier probe ({(barriers ? "barriers" : "none")}): {count} barriers, {gaps.Count} gaps > 5 us, median {Stats.Median(gaps):F1} us");
        }
        rep.Tables.Add(table);
        rep.Notes.Add("The barrier probe (second table) isolates one cost of the migration protocol: each `MemoryBarrierProcessWide` interrupts every " +
                      "other running thread of the process (an IPI, expensive under virtualisation), so a mutator loses that much time once per barrier " +
                      "whatever operation it is in; the compactor issues barriers per migration batch and per cache drain.");
    }

    private static Result RunConfig(Config c, HeapOptions options, int seed, long fillBytes, Func<Random, int> sizes,
                                    double measureSeconds, int maxRounds)
    {
        var result = new Result(c);
        using var heap = new NativeHeap(options);
        var blocks = new List<Block>();
        var mutators = new Mutator[c.Mutators];
        for (int i = 0; i < mutators.Length; i++) mutators[i] = new Mutator(heap, seed * 31 + i, c.Paced);
        try
        {
            // Warm-up: fragment, run the mutators for a moment (JIT, thread caches, page faults), then forget it. With a
            // compactor, one unmeasured round of it too: otherwise the runtime's tiered compiler recompiles the
            // compaction paths during the first measured round, on a core a mutator waits for (seen with perf sched:
            // the ".NET Tiered Compilation" thread ran 1.5-4 ms at a time while a woken mutator waited).
            Fragment(heap, blocks, new Random(seed), fillBytes, sizes, mutators, out result.LiveBytes);
            RunWindow(mutators, () => Thread.Sleep(100));
            if (c.Compaction)
            {
                Round(TimeSpan.FromSeconds(Math.Min(1, measureSeconds)));
                result.RoundsEndedIdle = 0;
                result.Wakes = result.BusyWakes = 0;
                result.LongestStepTicks = 0;
            }
            foreach (Mutator m in mutators) m.Clear();

            int round = 0;
            double measured = 0;
            while (measured < measureSeconds && round < maxRounds)
            {
                if (round > 0 || c.Compaction) Fragment(heap, blocks, new Random(seed + round + 1), fillBytes, sizes, mutators, out result.LiveBytes);
                TimeSpan cap = TimeSpan.FromSeconds(Math.Max(0.1, measureSeconds - measured));
                CompactionStatistics before = heap.GetStatistics().Compaction;   // the compactor is stopped: a quiet heap
                (double window, long cpu) w = Round(cap);
                CompactionStatistics after = heap.GetStatistics().Compaction;
                result.BytesMoved += after.BytesMoved - before.BytesMoved;
                result.Barriers += after.Barriers - before.Barriers;
                result.ThreadCpuNs += after.BackgroundCpuNanoseconds - before.BackgroundCpuNanoseconds;
                result.ChargedCpuNs += after.BackgroundChargedCpuNanoseconds - before.BackgroundChargedCpuNanoseconds;
                result.WasteBackoffs += after.WasteBackoffs - before.WasteBackoffs;
                result.ProcessCpuNs = result.ProcessCpuNs < 0 || w.cpu < 0 ? -1 : result.ProcessCpuNs + w.cpu;
                result.Corrupt += HeapWorkload.CountCorrupt(heap, blocks);
                measured += w.window;
                round++;
            }
            result.MeasuredSeconds = measured;
            result.Rounds = round;

            // One window of the configuration's driver, at most cap long (the stepped and thread drivers end earlier
            // when their work is done); the warm-up's round counts nothing (the callers clear the mutators after it).
            (double window, long cpu) Round(TimeSpan cap)
            {
                (double window, long cpu) w;
                if (c.Driver == Driver.Stepped)
                {
                    using var compactor = new CompactorThread(heap, options.CompactionInterval);
                    bool idle = false;
                    w = RunWindow(mutators, () => idle = compactor.WaitIdle(cap));
                    if (idle) result.RoundsEndedIdle++;
                    compactor.Stop();
                    if (compactor.Error != null) throw new InvalidOperationException("the compactor thread failed: " + compactor.Error.Message, compactor.Error);
                    result.Wakes += compactor.Wakes;
                    result.BusyWakes += compactor.BusyWakes;
                    result.LongestStepTicks = Math.Max(result.LongestStepTicks, compactor.LongestStepTicks);
                }
                else if (c.Driver == Driver.Thread)
                {
                    bool ended = false;
                    w = RunWindow(mutators, () =>
                    {
                        heap.StartBackgroundCompaction();
                        ended = WaitForWasteRun(heap, cap);
                        heap.StopBackgroundCompaction();
                    });
                    if (ended) result.RoundsEndedIdle++;
                    if (heap.GetStatistics().BackgroundFailures > 0) throw new InvalidOperationException("the background thread failed");
                }
                else
                {
                    w = RunWindow(mutators, () => Thread.Sleep(TimeSpan.FromSeconds(measureSeconds)));
                }
                return w;
            }
            foreach (Mutator m in mutators)
            {
                result.Pin.Add(m.Pin);
                result.Alloc.Add(m.Alloc);
                result.Iteration.Add(m.Iteration);
                result.Gap.Add(m.Gap);
            }
        }
        finally
        {
            foreach (Mutator m in mutators) m.Dispose();
        }
        HeapWorkload.FreeAll(heap, blocks);
        return result;
    }

    /// <summary>Waits until the heap's background thread has started a waste-driven run and ended it (true), or until
    /// <paramref name="cap"/> has passed (false). Polls the run's flag (one racy read, no lock) every 10 ms.</summary>
    private static bool WaitForWasteRun(NativeHeap heap, TimeSpan cap)
    {
        long end = Stopwatch.GetTimestamp() + (long)(cap.TotalSeconds * Stopwatch.Frequency);
        bool seen = false;
        while (Stopwatch.GetTimestamp() < end)
        {
            Thread.Sleep(10);
            bool active = heap.BackgroundWasteRunActive();
            if (seen && !active) return true;
            seen |= active;
        }
        return false;
    }

    /// <summary>With the mutators parked: frees the old survivors, refills, frees 3/4 at random, and deals the
    /// survivors out to the mutators as pin targets.</summary>
    private static void Fragment(NativeHeap heap, List<Block> blocks, Random rng, long fillBytes, Func<Random, int> sizes, Mutator[] mutators, out long live)
    {
        HeapWorkload.FreeAll(heap, blocks);
        HeapWorkload.Fill(heap, rng, fillBytes, sizes, 0, out _, into: blocks);
        HeapWorkload.FreeRandom(heap, blocks, rng, 3, 4);
        live = heap.GetStatistics().LiveBytes;
        for (int i = 0; i < mutators.Length; i++)
            mutators[i].Targets = blocks.Where((_, k) => k % mutators.Length == i).ToArray();
    }

    /// <summary>Lets the mutators run while <paramref name="wait"/> blocks; returns the seconds they ran and the
    /// process's CPU time over those seconds (nanoseconds, all threads; -1 without a process CPU clock).</summary>
    private static (double seconds, long cpu) RunWindow(Mutator[] mutators, Action wait)
    {
        foreach (Mutator m in mutators) m.Resume();
        long t0 = Stopwatch.GetTimestamp(), cpu0 = ProcessCpuClock.Nanoseconds();
        wait();
        foreach (Mutator m in mutators) m.Park();
        long t1 = Stopwatch.GetTimestamp(), cpu1 = ProcessCpuClock.Nanoseconds();
        foreach (Mutator m in mutators)
            if (m.Error != null) throw new InvalidOperationException("a mutator failed: " + m.Error.Message, m.Error);
        return (Stats.Us(t1 - t0) / 1e6, cpu0 < 0 || cpu1 < 0 ? -1 : cpu1 - cpu0);
    }

    /// <summary>A mutator thread: pin + write + unpin a target, allocate + free a small block; parked between windows.</summary>
    private sealed class Mutator : IDisposable
    {
        private readonly NativeHeap _heap;
        private readonly Thread _thread;
        private readonly bool _paced;
        private volatile bool _run, _stop, _parked = true;
        private ulong _state;

        public Mutator(NativeHeap heap, int seed, bool paced)
        {
            _heap = heap;
            _paced = paced;
            _state = (ulong)seed * 0x9E3779B97F4A7C15UL | 1;
            _thread = new Thread(Loop) { IsBackground = true, Name = "mutator" };
            _thread.Start();
        }

        public Block[] Targets { get; set; } = [];
        public LatencyHistogram Pin { get; } = new();
        public LatencyHistogram Alloc { get; } = new();
        public LatencyHistogram Iteration { get; } = new();
        public LatencyHistogram Gap { get; } = new();

        public void Clear()
        {
            Pin.Clear();
            Alloc.Clear();
            Iteration.Clear();
            Gap.Clear();
        }

        /// <summary>The first exception a mutator's operations threw (it then stops), or null.</summary>
        public Exception? Error { get; private set; }

        /// <summary>Lets the thread run and waits until it has left its parking loop.</summary>
        public void Resume()
        {
            _run = true;
            SpinWait spin = default;
            while (_parked && Error == null) spin.SpinOnce();
        }

        /// <summary>Stops the thread between two iterations and waits until it is parked.</summary>
        public void Park()
        {
            _run = false;
            SpinWait spin = default;
            while (!_parked) spin.SpinOnce();
        }

        public void Dispose()
        {
            _stop = true;
            _run = false;
            _thread.Join();
        }

        private ulong Next()
        {
            _state ^= _state << 13;
            _state ^= _state >> 7;
            _state ^= _state << 17;
            return _state;
        }

        private void Loop()
        {
            try
            {
                Iterate();
            }
            catch (Exception e)
            {
                Error = e;
            }
            _parked = true;
        }

        // _parked is written only here: true at the top of the loop when asked to stop (so no operation is in
        // flight), false once a resume is seen.
        // The gap is measured from one iteration's start to the next one's; a park or a paced sleep starts afresh.
        private void Iterate()
        {
            long last = 0;
            int burst = 0;
            while (!_stop)
            {
                if (!_run)
                {
                    _parked = true;
                    while (!_run && !_stop) Thread.Sleep(1);
                    if (!_stop) _parked = false;
                    last = 0;
                    continue;
                }
                if (_paced && ++burst == PacedBurst)
                {
                    burst = 0;
                    Thread.Sleep(1);
                    last = 0;
                }
                Block[] targets = Targets;
                if (targets.Length == 0) { Thread.Yield(); continue; }
                ulong r = Next();
                Block b = targets[(int)(r % (ulong)targets.Length)];
                int size = 16 + (int)((r >> 40) % 241);

                long t0 = Stopwatch.GetTimestamp(), t1;
                if (last != 0) Gap.Record(t0 - last);
                last = t0;
                using (PinScope pin = _heap.Pin(b.Handle))
                {
                    t1 = Stopwatch.GetTimestamp();
                    new Span<byte>(pin.Pointer, Math.Min(64, b.Size)).Fill(b.Pattern);
                }
                long t2 = Stopwatch.GetTimestamp();
                bool ok = _heap.TryAllocate(size, BlockKind.Movable, out BlockHandle h);
                long t3 = Stopwatch.GetTimestamp();
                if (ok) _heap.Free(h);
                long t4 = Stopwatch.GetTimestamp();
                Pin.Record(t1 - t0);
                Alloc.Record(t3 - t2);
                Iteration.Record(t4 - t0);
            }
        }
    }

    /// <summary>The background compactor's loop (as in <see cref="NativeHeap.StartBackgroundCompaction"/>): wait one
    /// interval, run one step; counts the steps that did work and signals after <see cref="IdleWakesToEndRound"/>
    /// idle ones in a row.</summary>
    private sealed class CompactorThread : IDisposable
    {
        private readonly ManualResetEventSlim _stop = new(), _idle = new();
        private readonly Thread _thread;

        private readonly NativeHeap _heap;
        private readonly TimeSpan _interval;

        public CompactorThread(NativeHeap heap, TimeSpan interval)
        {
            _heap = heap;
            _interval = interval;
            _thread = new Thread(Loop) { IsBackground = true, Name = "bench compactor" };
            _thread.Start();
        }

        private void Loop()
        {
            long origin = Stopwatch.GetTimestamp();
            int idle = 0;
            try
            {
                while (!_stop.Wait(_interval))
                {
                    long t0 = Stopwatch.GetTimestamp();
                    CompactionStatistics s = _heap.RunCompactionStep(Stopwatch.GetElapsedTime(origin));
                    LongestStepTicks = Math.Max(LongestStepTicks, Stopwatch.GetTimestamp() - t0);
                    Wakes++;
                    if (s.BytesMoved == 0 && s.PgmigrateSuccess == 0 && s.PagesCompacted == 0)
                    {
                        if (++idle >= IdleWakesToEndRound) _idle.Set();
                        continue;
                    }
                    idle = 0;
                    BusyWakes++;
                    BytesMoved += s.BytesMoved;
                }
            }
            catch (Exception e)
            {
                Error = e;
                _idle.Set();
            }
        }

        public Exception? Error { get; private set; }
        public long Wakes { get; private set; }
        public long BusyWakes { get; private set; }
        public long BytesMoved { get; private set; }
        public long LongestStepTicks { get; private set; }

        /// <summary>True when the compactor went idle before <paramref name="cap"/> passed.</summary>
        public bool WaitIdle(TimeSpan cap) => _idle.Wait(cap) && Error == null;

        public void Stop()
        {
            _stop.Set();
            _thread.Join();
        }

        public void Dispose()
        {
            Stop();
            _stop.Dispose();
            _idle.Dispose();
        }
    }
}
