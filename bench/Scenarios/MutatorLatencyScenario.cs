using System.Diagnostics;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Scenarios;

/// <summary>
/// Scenario 4, mutator latency during background compaction: mutator threads pin a block of the fragmented heap,
/// write its first bytes, unpin, then allocate and free a small block, in a loop, while the background compactor
/// works on the heap; every pin and every allocation is timed (Stopwatch ticks), and so is every whole iteration
/// (the longest one is the longest stall a mutator saw). The baseline is the same mutators on the same kind of
/// heap with no compactor running.
/// </summary>
/// <remarks>
/// Compaction ends when the heap is compacted, so the run is a series of rounds: with the mutators parked, the heap
/// is fragmented afresh (refilled, 3/4 freed at random), then the compactor and the mutators run until the compactor
/// has had nothing to do for 5 wakes in a row; only that window is measured. The compactor thread is this
/// scenario's own copy of the one <see cref="NativeHeap.StartBackgroundCompaction"/> starts (wait one
/// <see cref="HeapOptions.CompactionInterval"/>, then <see cref="NativeHeap.RunCompactionStep"/>), so that it can
/// tell when a wake found nothing to do without polling the heap's statistics (which take every lock).
/// </remarks>
public static unsafe class MutatorLatencyScenario
{
    private const int IdleWakesToEndRound = 5;

    private sealed record Config(string Name, int Mutators, bool Compaction, long BudgetBytes, TimeSpan BudgetTime);

    private sealed class Result(Config config)
    {
        public Config Config { get; } = config;
        public LatencyHistogram Pin { get; } = new();
        public LatencyHistogram Alloc { get; } = new();
        public LatencyHistogram Iteration { get; } = new();
        public double MeasuredSeconds;
        public int Rounds;
        public long BytesMoved, Wakes, BusyWakes, LongestStepTicks, LiveBytes;
        public int RoundsEndedIdle;
        public int Corrupt;
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
            new("no compaction, 2 mutators", 2, false, 0, TimeSpan.Zero),
            new("background, default budget, 2 mutators", 2, true, d.CompactionBudgetBytes, d.CompactionBudgetTime),
            new("background, no budget, 2 mutators", 2, true, 0, TimeSpan.Zero),
            new("no compaction, 1 mutator", 1, false, 0, TimeSpan.Zero),
            new("background, default budget, 1 mutator", 1, true, d.CompactionBudgetBytes, d.CompactionBudgetTime),
        ];

        var results = new List<Result>();
        foreach (Config c in configs)
        {
            var options = new HeapOptions
            {
                ArenaBytes = arena, CompactionInterval = interval, CompactionBudgetBytes = c.BudgetBytes, CompactionBudgetTime = c.BudgetTime,
                DecommitDelay = TimeSpan.FromHours(1),
            };
            long fill = arena * options.MovableZonePercent / 100 * fillPercent / 100;
            Result r = RunConfig(c, options, o.Seed, fill, sizes, measureSeconds, maxRounds);
            results.Add(r);
            Print(r);
        }

        static void Print(Result r) =>
            Console.WriteLine($"  {r.Config.Name}: {r.Rounds} round(s), {r.MeasuredSeconds:F2} s, {r.Pin.Count:N0} iterations; " +
                              $"pin p99.9 {Stats.Us(r.Pin.Percentile(99.9)):F2} us max {Stats.Us(r.Pin.Max):F0} us; " +
                              $"alloc p99.9 {Stats.Us(r.Alloc.Percentile(99.9)):F2} us max {Stats.Us(r.Alloc.Max):F0} us; " +
                              $"longest stall {Stats.Us(r.Iteration.Max):F0} us; moved {Fmt.Mib(r.BytesMoved)}, {r.BusyWakes}/{r.Wakes} busy wakes, " +
                              $"longest wake {Stats.Us(r.LongestStepTicks) / 1000:F1} ms; {r.Corrupt} corrupt");

        var rep = new ScenarioReport
        {
            Name = "latency",
            Title = "4. Mutator latency during background compaction",
            Setup = $"A {arena >> 20} MiB heap (75% movable zone) is filled to {fillPercent}% of its movable zone with written movable blocks (16 B-1 KiB and 48-80 KiB, half the bytes each) and 3/4 " +
                    "are freed at random. Each mutator thread loops: pin a random survivor of its share (a `PinScope`), write its first 64 bytes, unpin; " +
                    "allocate a 16-256 B movable block and free it. Timed: the `Pin` call, the `TryAllocate` call, and the whole iteration (longest stall). " +
                    $"With compaction, a compactor thread wakes every {interval.TotalMilliseconds} ms and runs `RunCompactionStep` (proactiveness {d.Proactiveness}, " +
                    $"default budget {Fmt.Mib(d.CompactionBudgetBytes)} / {d.CompactionBudgetTime.TotalMilliseconds} ms per pass, or none); the heap is " +
                    $"refragmented for each round and a round's window ends after {IdleWakesToEndRound} idle wakes or when {measureSeconds} s are measured " +
                    $"in all (at most {maxRounds} rounds). Baselines run the same mutators for {measureSeconds} s on a fragmented heap with no compactor. " +
                    "Survivors are verified byte for byte after every round.",
        };
        var table = new MarkdownTable("<Configuration", "Measured s", "Rounds", "Iterations", "Pin p99 µs", "Pin p99.9 µs", "Pin max µs",
                                      "Alloc p99 µs", "Alloc p99.9 µs", "Alloc max µs", "Longest stall µs", "Moved MiB", "Busy / all wakes", "Longest wake ms", "Corrupt");
        foreach (Result r in results)
        {
            table.Add(r.Config.Name, Fmt.F(r.MeasuredSeconds, 2), Fmt.N(r.Rounds), Fmt.N(r.Pin.Count),
                      Fmt.Us(Stats.Us(r.Pin.Percentile(99))), Fmt.Us(Stats.Us(r.Pin.Percentile(99.9))), Fmt.Us(Stats.Us(r.Pin.Max)),
                      Fmt.Us(Stats.Us(r.Alloc.Percentile(99))), Fmt.Us(Stats.Us(r.Alloc.Percentile(99.9))), Fmt.Us(Stats.Us(r.Alloc.Max)),
                      Fmt.Us(Stats.Us(r.Iteration.Max)),
                      r.Config.Compaction ? Fmt.F(r.BytesMoved / (1024.0 * 1024)) : "-",
                      r.Config.Compaction ? $"{Fmt.N(r.BusyWakes)} / {Fmt.N(r.Wakes)}" : "-",
                      r.Config.Compaction ? Fmt.F(Stats.Us(r.LongestStepTicks) / 1000) : "-",
                      Fmt.N(r.Corrupt));
            rep.CorruptBlocks += r.Corrupt;
        }
        rep.Tables.Add(table);

        foreach (Result r in results.Where(r => r.Config.Compaction))
        {
            Result b = results.First(x => !x.Config.Compaction && x.Config.Mutators == r.Config.Mutators);
            string what = r.Config.Name.Replace("background, ", "");
            double pin = Stats.Us(r.Pin.Percentile(99.9)), alloc = Stats.Us(r.Alloc.Percentile(99.9)), stall = Stats.Us(r.Iteration.Max);
            rep.Summary.Add(new SummaryRow("4. Mutator latency", $"pin p99.9 µs ({what})", Fmt.Us(Stats.Us(b.Pin.Percentile(99.9))), Fmt.Us(pin),
                                           Fmt.X(pin / Stats.Us(b.Pin.Percentile(99.9))), "<= 10 µs", pin <= 10));
            rep.Summary.Add(new SummaryRow("4. Mutator latency", $"allocate p99.9 µs ({what})", Fmt.Us(Stats.Us(b.Alloc.Percentile(99.9))), Fmt.Us(alloc),
                                           Fmt.X(alloc / Stats.Us(b.Alloc.Percentile(99.9))), "<= 10 µs", alloc <= 10));
            rep.Summary.Add(new SummaryRow("4. Mutator latency", $"longest stall µs ({what})", Fmt.Us(Stats.Us(b.Iteration.Max)), Fmt.Us(stall),
                                           Fmt.X(stall / Stats.Us(b.Iteration.Max)), "<= 1 ms", stall <= 1000));
        }
        rep.Notes.Add($"The machine has {Environment.ProcessorCount} cores: with 2 mutators and the compactor there are more runnable threads than cores, " +
                      "so the scheduler's time slices (milliseconds) show up in the maxima; the 1-mutator rows keep the threads within the cores.");
        foreach (Result r in results.Where(r => r.Config.Compaction && r.RoundsEndedIdle < r.Rounds))
            rep.Notes.Add($"{r.Config.Name}: the compactor never had {IdleWakesToEndRound} idle wakes in a row in {r.Rounds - r.RoundsEndedIdle} of " +
                          $"{r.Rounds} round(s): it moved {Fmt.Mib(r.BytesMoved)} in {r.MeasuredSeconds:F1} s for {Fmt.Mib(r.LiveBytes)} live " +
                          $"({r.BusyWakes:N0} of {r.Wakes:N0} wakes did work).");
        BarrierProbe(rep, o.Quick ? 0.3 : 1.0);
        rep.Notes.Add("Percentiles come from a log-linear histogram (within 1.6%); maxima are exact. Stopwatch ticks are nanoseconds here.");
        return rep;
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
        for (int i = 0; i < mutators.Length; i++) mutators[i] = new Mutator(heap, seed * 31 + i);
        try
        {
            // Warm-up: fragment, run the mutators for a moment (JIT, thread caches, page faults), then forget it.
            Fragment(heap, blocks, new Random(seed), fillBytes, sizes, mutators, out result.LiveBytes);
            RunWindow(mutators, () => Thread.Sleep(100));
            foreach (Mutator m in mutators) m.Clear();

            int round = 0;
            double measured = 0;
            while (measured < measureSeconds && round < maxRounds)
            {
                if (round > 0 || c.Compaction) Fragment(heap, blocks, new Random(seed + round + 1), fillBytes, sizes, mutators, out result.LiveBytes);
                double window;
                if (c.Compaction)
                {
                    using var compactor = new CompactorThread(heap, options.CompactionInterval);
                    TimeSpan cap = TimeSpan.FromSeconds(Math.Max(0.1, measureSeconds - measured));
                    bool idle = false;
                    window = RunWindow(mutators, () => idle = compactor.WaitIdle(cap));
                    if (idle) result.RoundsEndedIdle++;
                    compactor.Stop();
                    if (compactor.Error != null) throw new InvalidOperationException("the compactor thread failed: " + compactor.Error.Message, compactor.Error);
                    result.BytesMoved += compactor.BytesMoved;
                    result.Wakes += compactor.Wakes;
                    result.BusyWakes += compactor.BusyWakes;
                    result.LongestStepTicks = Math.Max(result.LongestStepTicks, compactor.LongestStepTicks);
                }
                else
                {
                    window = RunWindow(mutators, () => Thread.Sleep(TimeSpan.FromSeconds(measureSeconds)));
                }
                result.Corrupt += HeapWorkload.CountCorrupt(heap, blocks);
                measured += window;
                round++;
            }
            result.MeasuredSeconds = measured;
            result.Rounds = round;
            foreach (Mutator m in mutators)
            {
                result.Pin.Add(m.Pin);
                result.Alloc.Add(m.Alloc);
                result.Iteration.Add(m.Iteration);
            }
        }
        finally
        {
            foreach (Mutator m in mutators) m.Dispose();
        }
        HeapWorkload.FreeAll(heap, blocks);
        return result;
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

    /// <summary>Lets the mutators run while <paramref name="wait"/> blocks; returns the seconds they ran.</summary>
    private static double RunWindow(Mutator[] mutators, Action wait)
    {
        foreach (Mutator m in mutators) m.Resume();
        long t0 = Stopwatch.GetTimestamp();
        wait();
        foreach (Mutator m in mutators) m.Park();
        long t1 = Stopwatch.GetTimestamp();
        foreach (Mutator m in mutators)
            if (m.Error != null) throw new InvalidOperationException("a mutator failed: " + m.Error.Message, m.Error);
        return Stats.Us(t1 - t0) / 1e6;
    }

    /// <summary>A mutator thread: pin + write + unpin a target, allocate + free a small block; parked between windows.</summary>
    private sealed class Mutator : IDisposable
    {
        private readonly NativeHeap _heap;
        private readonly Thread _thread;
        private volatile bool _run, _stop, _parked = true;
        private ulong _state;

        public Mutator(NativeHeap heap, int seed)
        {
            _heap = heap;
            _state = (ulong)seed * 0x9E3779B97F4A7C15UL | 1;
            _thread = new Thread(Loop) { IsBackground = true, Name = "mutator" };
            _thread.Start();
        }

        public Block[] Targets { get; set; } = [];
        public LatencyHistogram Pin { get; } = new();
        public LatencyHistogram Alloc { get; } = new();
        public LatencyHistogram Iteration { get; } = new();

        public void Clear()
        {
            Pin.Clear();
            Alloc.Clear();
            Iteration.Clear();
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
        private void Iterate()
        {
            while (!_stop)
            {
                if (!_run)
                {
                    _parked = true;
                    while (!_run && !_stop) Thread.Sleep(1);
                    if (!_stop) _parked = false;
                    continue;
                }
                Block[] targets = Targets;
                if (targets.Length == 0) { Thread.Yield(); continue; }
                ulong r = Next();
                Block b = targets[(int)(r % (ulong)targets.Length)];
                int size = 16 + (int)((r >> 40) % 241);

                long t0 = Stopwatch.GetTimestamp(), t1;
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
