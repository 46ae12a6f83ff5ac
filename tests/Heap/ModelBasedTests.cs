using System.Diagnostics;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Tests.Model;
using CsCheck;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// Model-based property tests of the whole public API (issue 11): CsCheck generates sequences of every operation —
/// allocations of every kind and size range (the size-class, slab, page and pageblock boundaries included), frees,
/// short and atomic pins (some handed to another thread), long-term pins single and batched, owners that agree,
/// refuse, answer "try again", throw or re-enter the heap, explicit compaction, background steps on a driven clock,
/// release, statistics, pool rents and returns, stale, doubly freed and forged handles, Dispose — and
/// <see cref="ModelRun"/> checks each step against a reference model (see there). A failing sequence is shrunk and
/// printed with its seed.
/// </summary>
/// <remarks>
/// Environment: <c>MODEL_OPS</c> sets the operations of a run (100,000 by default, the CI run; 10,000,000 for the long
/// run), <c>MODEL_SEED</c> replays a seed CsCheck printed.
/// </remarks>
public sealed class ModelBasedTests(ITestOutputHelper output)
{
    private const int MaxSequence = 400;

    internal static long Operations(long ciDefault) =>
        long.TryParse(Environment.GetEnvironmentVariable("MODEL_OPS"), out long n) && n > 0 ? n : ciDefault;

    private static string? Seed => Environment.GetEnvironmentVariable("MODEL_SEED") is { Length: > 0 } s ? s : null;

    /// <summary>How often each operation comes up (weights out of their sum): mostly allocations, frees and checks, so
    /// that the heap fills and fragments; the costly ones (a thread per release on another thread, a long-term pin
    /// that waits out its patience) rarely.</summary>
    private static readonly (int weight, OpKind kind)[] Weights =
    [
        (140, OpKind.AllocSmall), (40, OpKind.AllocMedium), (12, OpKind.AllocLarge), (25, OpKind.AllocBoundary),
        (5, OpKind.AllocBadArgument), (30, OpKind.AllocContext),
        (150, OpKind.Free), (30, OpKind.FreeContext), (6, OpKind.FreeWhileScoped), (20, OpKind.Verify), (10, OpKind.Rewrite),
        (25, OpKind.AcquirePin), (22, OpKind.ReleasePin), (1, OpKind.ReleasePinOnOtherThread),
        (8, OpKind.PinLongTerm), (3, OpKind.PinLongTermBatch), (9, OpKind.ReleaseLongTerm),
        (15, OpKind.SetOwner), (4, OpKind.ClearOwner),
        (6, OpKind.Compact), (6, OpKind.Step), (3, OpKind.Release), (4, OpKind.Statistics),
        (8, OpKind.Rent), (3, OpKind.RentLongTerm), (10, OpKind.Return),
        (8, OpKind.Stale), (8, OpKind.Forged), (5, OpKind.StablePointer), (1, OpKind.Dispose),
        (8, OpKind.OsRefuse), (4, OpKind.OsAllow),
    ];

    internal static readonly Gen<Op> GenOp =
        Gen.Select(Gen.Frequency(Weights.Select(w => (w.weight, w.kind)).ToArray()), Gen.Int[0, int.MaxValue], Gen.Int,
            (k, a, b) => new Op(k, a, b));

    /// <summary>The rare long-term pin that waits <see cref="Compaction.Allocator.NativeHeap.LongTermPinPatience"/>
    /// for an atomic pin: one in a few sequences.</summary>
    internal static readonly Gen<Op[]> GenSequence =
        Gen.Select(GenOp.Array[1, MaxSequence], Gen.Int[0, 40], Gen.Int[0, int.MaxValue], (ops, rare, at) =>
        {
            if (rare == 0 && ops.Length > 1) ops[at % ops.Length] = new Op(OpKind.PinLongTermWhilePinned, 0, 0);
            return ops;
        });

    internal static void Run(Op[] ops, bool poison = false, bool faults = false)
    {
        using var run = new ModelRun(poison, faults);
        foreach (Op op in ops) run.Apply(op);
        run.Finish();
    }

    [Fact]
    public void EverySequenceOfOperationsAgreesWithTheModel()
    {
        long target = Operations(100_000);
        long ops = 0, sequences = 0;
        var clock = Stopwatch.StartNew();
        // Sequences are 1-400 steps (200 on average); each runs on a heap of its own.
        long iter = Math.Max(1, target / (MaxSequence / 2));
        // A quarter of the heaps poison freed memory (HeapOptions.PoisonFreedMemory): the validator then checks the
        // poison of every free byte, and correct code must get no use-after-free report. Another quarter run over an
        // OS layer that refuses the commits, purges, decommits and huge-page advice the OsRefuse steps say.
        Gen.Select(GenSequence, Gen.Int[0, 3]).Sample((seq, variant) =>
        {
            Run(seq, poison: variant == 0, faults: variant == 1);
            Interlocked.Add(ref ops, seq.Length);
            Interlocked.Increment(ref sequences);
        }, seed: Seed, iter: iter, print: t => (t.Item2 == 0 ? "poisoned heap, " : t.Item2 == 1 ? "refusing OS layer, " : "") + Describe(t.Item1), writeLine: output.WriteLine);
        output.WriteLine($"{ops:N0} operations in {sequences:N0} sequences, {clock.Elapsed.TotalSeconds:F1} s; {ModelRun.Refusals:N0} OS calls refused");
        Assert.True(ModelRun.Refusals > 0, "no OS call was refused: the refusing heaps tested nothing");
        // Every sequence of the sample ran. Not the operations against the target: sequence lengths are random (1-400),
        // so at a reduced MODEL_OPS (50 sequences at 10,000) their sum may fall well short of it.
        Assert.True(sequences == iter, $"{sequences} of the {iter} sequences ran ({ops} operations)");
    }

    /// <summary>
    /// The concurrent variant: three threads, each running a generated sequence of its own against one shared heap
    /// (its own blocks, pins, rents and stale handles in a model of its own), while the background compactor runs at
    /// full aggressiveness (1 ms wakes, proactiveness 100, waste ratio 1.05) and the threads' own steps compact, step
    /// and release. Every byte, every pinned address and every exception is checked as in the single-threaded
    /// suite; the heap's counts and the validator once all threads ended. Owner callbacks run on whichever thread
    /// compacts, so they check from there.
    /// </summary>
    [Fact]
    public void ThreadsSharingAHeapBesideTheBackgroundCompactorEachAgreeWithTheirModel()
    {
        long target = Operations(100_000) * 3 / 10;
        long ops = 0, rounds = 0;
        var clock = Stopwatch.StartNew();
        long iter = Math.Max(1, target / (3 * MaxSequence / 2));
        Gen.Select(GenSequence, GenSequence, GenSequence, (a, b, c) => new[] { a, b, c }).Sample(seqs =>
        {
            RunShared(seqs);
            Interlocked.Add(ref ops, seqs.Sum(q => (long)q.Length));
            Interlocked.Increment(ref rounds);
        }, seed: Seed, iter: iter, threads: 1, print: seqs => string.Join(" | ", seqs.Select(Describe)), writeLine: output.WriteLine);
        output.WriteLine($"{ops:N0} operations on three threads, {clock.Elapsed.TotalSeconds:F1} s");
        // Every round of the sample ran. Not the operations against the target: sequence lengths are random (1-400),
        // so at a reduced MODEL_OPS (5 rounds of three sequences at 10,000) their sum may fall well short of it.
        Assert.True(rounds == iter, $"{rounds} of the {iter} rounds ran ({ops} operations)");
    }

    internal static void RunShared(Op[][] sequences)
    {
        using var heap = ModelRun.NewHeap(256L << 20, background: true);
        heap.StartBackgroundCompaction();
        var errors = new Exception?[sequences.Length];
        var threads = new Thread[sequences.Length];
        for (int t = 0; t < threads.Length; t++)
        {
            int k = t;
            threads[t] = new Thread(() =>
            {
                using var run = new ModelRun(heap, shared: true);
                try
                {
                    foreach (Op op in sequences[k]) run.Apply(op);
                    run.Finish();
                }
                catch (Exception e) { errors[k] = e; }
            });
            threads[t].Start();
        }
        foreach (Thread t in threads) t.Join();
        heap.StopBackgroundCompaction();
        if (errors.FirstOrDefault(e => e != null) is { } error) throw new ModelViolationException($"thread {Array.IndexOf(errors, error)}: {error.Message}");
        HeapStatistics s = heap.GetStatistics();
        if (s.LiveBlocks != 0 || s.LiveBytes != 0 || s.LongTermPins != 0)
            throw new ModelViolationException($"every thread freed what it had, yet the heap counts {s.LiveBlocks} blocks, {s.LiveBytes} B, {s.LongTermPins} long-term pins");
        List<string> problems = heap.Validate();
        if (problems.Count > 0) throw new ModelViolationException("validator: " + string.Join("; ", problems.Take(5)));
        if (s.BackgroundFailures != 0) throw new ModelViolationException($"the background compactor failed: {s.LastBackgroundFailure}");
    }

    internal static string Describe(Op[] ops) => $"{ops.Length} steps: " + string.Join(", ", ops);
}
