using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Interop;

namespace Compaction.Bench.Soak;

/// <summary>
/// The <c>soak</c> command: every feature at once for a bounded time, on one heap with the background compactor on.
/// Worker threads allocate blocks of every size range, write a pattern, verify it under short pins (PinScope), atomic
/// pins held across other work (BlockPin) and long-term pins (PinLongTerm), rent and return pool buffers
/// (ArenaMemoryPool, both pin kinds), free at random, and a compactor thread calls <c>Compact()</c> now and then.
/// Every verification that finds a wrong byte, and every unexpected exception, is a failure. Resident memory is read
/// every second; once warm (after the first third) it must stay flat: the last third's median within 10% of the
/// middle third's. Beside it, in a process of its own, the C part (<see cref="CAbiSoak"/>): C threads doing the same
/// through the C ABI for the same time; its failures count in the soak's, and its RSS must stay flat the same way
/// (skipped, with the reason printed and written, when gcc or the NativeAOT publish is unavailable, or with
/// <c>--no-cabi</c>). Writes bench/results/soak.md and soak.svg (RSS over time).
/// </summary>
public static class SoakRun
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    private sealed class Tally
    {
        public long Operations, Verifications, Failures;
        public string? FirstFailure;

        public void Fail(string what)
        {
            Interlocked.Increment(ref Failures);
            Interlocked.CompareExchange(ref FirstFailure, what, null);
        }
    }

    public static int Run(string[] args)
    {
        int seconds = 60, threads = Math.Max(2, Environment.ProcessorCount), cThreads = 2;
        bool withC = true;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--seconds" && i + 1 < args.Length) seconds = int.Parse(args[++i], Inv);
            else if (args[i] == "--threads" && i + 1 < args.Length) threads = int.Parse(args[++i], Inv);
            else if (args[i] == "--c-threads" && i + 1 < args.Length) cThreads = int.Parse(args[++i], Inv);
            else if (args[i] == "--no-cabi") withC = false;
        }
        string? cSkipped = withC ? null : "--no-cabi";
        string? cProgram = withC ? CAbiSoak.Build(out cSkipped) : null;
        if (cProgram == null) Console.WriteLine($"soak: the C ABI part is SKIPPED: {cSkipped}");
        Console.WriteLine($"soak: {seconds} s, {threads} worker threads, the background compactor on" +
                          (cProgram != null ? $"; beside it {cThreads} C threads through the C ABI ({cProgram})" : ""));
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 1L << 30, CompactionInterval = TimeSpan.FromMilliseconds(50) });
        heap.StartBackgroundCompaction();
        using var shortPool = new ArenaMemoryPool(heap);
        using var longPool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        var tally = new Tally();
        using var stop = new CancellationTokenSource();
        var workers = Enumerable.Range(0, threads)
            .Select(t => new Thread(() => Work(heap, shortPool, longPool, t, tally, stop.Token)) { IsBackground = true, Name = $"soak {t}" })
            .ToList();
        var compactor = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                try { heap.Compact(); } catch (Exception e) { tally.Fail($"Compact: {e}"); }
                stop.Token.WaitHandle.WaitOne(700);
            }
        })
        { IsBackground = true };
        var samples = new List<(double s, long rss, long live)>();
        var cSamples = new List<(double s, long rss)>();
        long rss0 = Scenarios.ProcessMemory.ResidentBytes() ?? 0;
        var clock = Stopwatch.StartNew();
        using CAbiSoak? cSoak = cProgram != null ? CAbiSoak.Start(cProgram, seconds, cThreads) : null;
        workers.ForEach(w => w.Start());
        compactor.Start();
        for (int t = 1; t <= seconds; t++)
        {
            while (clock.Elapsed.TotalSeconds < t) Thread.Sleep(20);
            HeapStatistics s = heap.GetStatistics();
            samples.Add((t, (Scenarios.ProcessMemory.ResidentBytes() ?? 0) - rss0, s.LiveBytes));
            if (cSoak?.ResidentBytes() is long cRss) cSamples.Add((t, cRss));
            if (t % 10 == 0) Console.WriteLine($"  {t,4} s: {Interlocked.Read(ref tally.Operations):N0} operations, {Interlocked.Read(ref tally.Verifications):N0} verifications, {tally.Failures} failures, RSS +{samples[^1].rss >> 20} MiB, live {s.LiveBytes >> 20} MiB");
        }
        stop.Cancel();
        workers.ForEach(w => w.Join());
        compactor.Join();
        // The C soak stops by itself after the same time, then verifies and frees what it holds.
        CAbiSoak.Result? c = cSoak?.Finish(TimeSpan.FromSeconds(120));
        if (c is { Failures: > 0 }) { Interlocked.Add(ref tally.Failures, c.Failures); Interlocked.CompareExchange(ref tally.FirstFailure, "C ABI: " + c.FirstFailure, null); }
        heap.StopBackgroundCompaction();   // the validator needs a quiescent heap: no background step under it
        List<string> problems = heap.Validate();
        foreach (string p in problems.Take(5)) tally.Fail("validator: " + p);

        double Median(IEnumerable<long> v) { long[] a = v.Order().ToArray(); return a.Length == 0 ? 0 : a[a.Length / 2]; }
        int third = Math.Max(1, samples.Count / 3);
        double middle = Median(samples.Skip(third).Take(third).Select(x => x.rss)), last = Median(samples.Skip(2 * third).Select(x => x.rss));
        bool flat = last <= middle * 1.10 + (8 << 20);
        double cMiddle = Median(cSamples.Skip(third).Take(third).Select(x => x.rss)), cLast = Median(cSamples.Skip(2 * third).Select(x => x.rss));
        bool cFlat = cSamples.Count == 0 || cLast <= cMiddle * 1.10 + (8 << 20);
        HeapStatistics end = heap.GetStatistics();
        var sb = new StringBuilder();
        sb.AppendLine("# Soak run");
        sb.AppendLine();
        RunInfo.AppendProvenance(sb, $"dotnet run -c Release --project bench -- soak --seconds {seconds}", clock.Elapsed, 0, $"... -- soak --seconds {seconds}",
                                 null, RunInfo.LoadAverage());
        sb.AppendLine(string.Create(Inv, $"{threads} worker threads for {seconds} s on one heap (1 GiB reserved, background compactor on, a Compact() every 0.7 s): allocate 16 B-256 KiB, write, verify under PinScope, BlockPin and long-term pins, pool rents (short and long-term), free at random."));
        sb.AppendLine();
        sb.AppendLine("| Operations | Verifications | Failures | RSS growth, middle third (median MiB) | last third (median MiB) | Flat once warm | Bytes moved by compaction (MiB) | Long-term pins taken |");
        sb.AppendLine("|---:|---:|---:|---:|---:|---|---:|---:|");
        sb.AppendLine(string.Create(Inv, $"| {tally.Operations:N0} | {tally.Verifications:N0} | {tally.Failures} | {middle / 1048576:F1} | {last / 1048576:F1} | {(flat ? "yes" : "**no**")} | {end.Compaction.BytesMoved / 1048576.0:F0} | {end.LongTermPinMigrations:N0} moved |"));
        sb.AppendLine();
        if (c != null)
        {
            sb.AppendLine(string.Create(Inv, $"Beside it, in a process of its own, {c.Threads} C threads (tests/cabi/cabi_soak.c, pthreads) for the same {seconds} s through the C ABI (libcompaction_heap.so, NativeAOT) on a heap of their own (1 GiB reserved, background compactor on, cna_compact every 0.7 s): allocate 16 B-256 KiB (a tenth unmovable), write, verify under cna_pin (a nested pin must see the same address) and cna_pin_long_term, free at random; the heap must end empty. Its failures count in the soak's; its RSS is the whole process's (the library's runtime included)."));
            sb.AppendLine();
            sb.AppendLine("| C ABI: operations | Verifications | Failures | RSS, middle third (median MiB) | last third (median MiB) | Flat once warm | Bytes moved by compaction (MiB) | Long-term pins taken |");
            sb.AppendLine("|---:|---:|---:|---:|---:|---|---:|---:|");
            sb.AppendLine(string.Create(Inv, $"| {c.Operations:N0} | {c.Verifications:N0} | {c.Failures} | {cMiddle / 1048576:F1} | {cLast / 1048576:F1} | {(cFlat ? "yes" : "**no**")} | {c.BytesMoved / 1048576.0:F0} | {c.LongTermPinMigrations:N0} moved |"));
        }
        else
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"The C ABI part was **skipped**: {cSkipped}.");
        }
        if (tally.FirstFailure != null) sb.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"First failure: {tally.FirstFailure}");
        sb.AppendLine().AppendLine("![RSS over time](soak.svg)");
        var plot = new SvgPlot("Soak: resident memory over time", "time (s)", "MiB");
        plot.AddSeries("RSS growth", samples.Select(x => (x.s, x.rss / 1048576.0)).ToList());
        plot.AddSeries("live", samples.Select(x => (x.s, x.live / 1048576.0)).ToList());
        if (cSamples.Count > 0) plot.AddSeries("C ABI process RSS", cSamples.Select(x => (x.s, x.rss / 1048576.0)).ToList());
        string dir = Path.Combine(Paths.BenchDirectory(), "results");
        File.WriteAllText(Path.Combine(dir, "soak.svg"), plot.Render());
        File.WriteAllText(Path.Combine(dir, "soak.md"), sb.ToString());
        Console.Write(sb.ToString());
        bool ok = tally.Failures == 0 && flat && cFlat;
        Console.WriteLine($"soak: {(ok ? "OK" : "FAILED")}{(c == null ? $" (C ABI part skipped: {cSkipped})" : "")}; wrote {Path.Combine(dir, "soak.md")}");
        return ok ? 0 : 1;
    }

    private static byte Pattern(ulong h, int i) => (byte)((h * 0x9E3779B97F4A7C15UL >> 56) ^ (ulong)i * 31);

    private static bool Intact(ReadOnlySpan<byte> span, ulong h)
    {
        for (int i = 0; i < span.Length; i += 61) if (span[i] != Pattern(h, i)) return false;
        return span.Length == 0 || span[^1] == Pattern(h, span.Length - 1);
    }

    private static void Work(NativeHeap heap, ArenaMemoryPool shortPool, ArenaMemoryPool longPool, int seed, Tally tally, CancellationToken stop)
    {
        var rng = new Random(seed * 7919 + 1);
        var live = new List<BlockHandle>();
        var held = new List<BlockPin>();
        try
        {
            while (!stop.IsCancellationRequested)
            {
                int op = rng.Next(100);
                if (op < 40 && live.Count < 4000)
                {
                    int size = (int)Math.Exp(rng.NextDouble() * Math.Log(256 * 1024 / 16.0)) * 16;
                    if (!heap.TryAllocate(size, rng.Next(10) == 0 ? BlockKind.Unmovable : BlockKind.Movable, out BlockHandle h)) continue;
                    using (PinScope p = heap.Pin(h)) { Span<byte> s = p.Span; for (int i = 0; i < s.Length; i++) s[i] = Pattern(h.Value, i); }
                    live.Add(h);
                }
                else if (op < 65 && live.Count > 0)
                {
                    BlockHandle h = live[rng.Next(live.Count)];
                    using PinScope p = heap.Pin(h);
                    if (!Intact(p.Span, h.Value)) tally.Fail($"block {h} corrupt (PinScope)");
                    Interlocked.Increment(ref tally.Verifications);
                }
                else if (op < 72 && live.Count > 0)
                {
                    BlockHandle h = live[rng.Next(live.Count)];
                    // A long-term pin must move the block first: not while this worker itself holds it in place
                    // (that is the documented InvalidOperationException, after LongTermPinPatience).
                    bool longTerm = rng.Next(4) == 0 && !held.Any(p => p.Handle == h);
                    BlockPin pin = longTerm ? heap.PinLongTerm(h) : heap.AcquirePin(h);
                    if (!Intact(pin.Span, h.Value)) tally.Fail($"block {h} corrupt (BlockPin)");
                    Interlocked.Increment(ref tally.Verifications);
                    held.Add(pin);
                    if (held.Count > 16) { held[0].Dispose(); held.RemoveAt(0); }
                }
                else if (op < 80)
                {
                    ArenaMemoryPool pool = rng.Next(2) == 0 ? shortPool : longPool;
                    using IMemoryOwner<byte> r = pool.Rent(rng.Next(1, 64 * 1024));
                    Span<byte> s = r.Memory.Span;
                    s.Fill((byte)seed);
                    if (s[0] != (byte)seed || s[^1] != (byte)seed) tally.Fail("pool buffer corrupt");
                    Interlocked.Increment(ref tally.Verifications);
                }
                else if (live.Count > 0)
                {
                    int j = rng.Next(live.Count);
                    BlockHandle h = live[j];
                    foreach (BlockPin p in held.Where(p => p.Handle == h).ToList()) { p.Dispose(); held.Remove(p); }
                    heap.Free(h);
                    live[j] = live[^1];
                    live.RemoveAt(live.Count - 1);
                }
                Interlocked.Increment(ref tally.Operations);
            }
        }
        catch (Exception e)
        {
            tally.Fail($"worker {seed}: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            foreach (BlockPin p in held) p.Dispose();
            foreach (BlockHandle h in live)
            {
                try
                {
                    using (PinScope p = heap.Pin(h)) if (!Intact(p.Span, h.Value)) tally.Fail($"block {h} corrupt at the end");
                    heap.Free(h);
                }
                catch (Exception e) { tally.Fail($"worker {seed} cleanup: {e.Message}"); }
            }
        }
    }
}
