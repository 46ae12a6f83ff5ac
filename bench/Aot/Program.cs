using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Compaction.Allocator;

namespace Compaction.Bench.Aot;

/// <summary>
/// SmallAllocFree's loop outside BenchmarkDotNet, so that it can be compiled ahead of time: per batch, allocate
/// <see cref="Blocks"/> blocks of seeded sizes 16-256 B, then free them in the same order. A run is
/// <c>--batches</c> batches timed with a Stopwatch; the figure is the median ns per allocate+free pair over
/// <c>--runs</c> runs, after warm-up runs that take the page faults (and, under the JIT, the tiering).
/// Prints a markdown section; bench/aot.sh runs it published with NativeAOT and under the JIT.
/// </summary>
/// <remarks>One call of a row's delegate is one batch, so under the JIT the batch method is called thousands of
/// times during the warm-up and reaches tier 1 (a loop called once would stay in its OSR version).</remarks>
public static unsafe class Program
{
    /// <summary>Blocks live per batch and the seed of their sizes: the same as AllocFreeBenchmarks.</summary>
    private const int Blocks = 1000;
    private const int Seed = 20251124;
    private const int MinSize = 16, MaxSize = 256;

    public static int Main(string[] args)
    {
        int runs = 15, warmups = 5, batches = 1000;
        // PublishAot also sets IsDynamicCodeSupported=false for JIT runs of the project; what the JIT compiled tells.
        bool jit = System.Runtime.JitInfo.GetCompiledMethodCount() > 0;
        string label = jit ? "JIT" : "NativeAOT";
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs" when i + 1 < args.Length: runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmups" when i + 1 < args.Length: warmups = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--batches" when i + 1 < args.Length: batches = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--label" when i + 1 < args.Length: label = args[++i]; break;
                default:
                    Console.Error.WriteLine($"unknown or incomplete argument '{args[i]}'");
                    Console.Error.WriteLine("usage: Allocator.Bench.Aot [--runs N] [--warmups N] [--batches N] [--label TEXT]");
                    return 2;
            }
        }
        if (runs < 1 || batches < 1 || warmups < 0) { Console.Error.WriteLine("runs and batches must be >= 1, warmups >= 0"); return 2; }

        var rng = new Random(Seed);
        int[] sizes = new int[Blocks];
        for (int i = 0; i < Blocks; i++) sizes[i] = rng.Next(MinSize, MaxSize + 1);

        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20 });
        var handles = new BlockHandle[Blocks];
        var pointers = new nint[Blocks];

        (string Name, Action Batch)[] rows =
        [
            ("NativeHeap movable", () => HeapBatch(heap, sizes, handles, BlockKind.Movable)),
            ("NativeHeap unmovable", () => HeapBatch(heap, sizes, handles, BlockKind.Unmovable)),
            ("NativeHeap movable, HeapContext", () => ContextBatch(heap, sizes, handles)),
            ("glibc (NativeMemory)", () => GlibcBatch(sizes, pointers)),
        ];

        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"## {label}");
        Console.WriteLine();
        Console.WriteLine($"{RuntimeInformation.FrameworkDescription}, {(jit ? $"JIT ({System.Runtime.JitInfo.GetCompiledMethodCount()} methods compiled before the runs)" : "ahead-of-time compiled (no JIT)")}; " +
                          $"{warmups} warm-up + {runs} measured runs of {batches} batches x {Blocks} pairs.");
        Console.WriteLine();
        Console.WriteLine("| Benchmark | Median ns/pair | Min | Max |");
        Console.WriteLine("|---|---:|---:|---:|");
        foreach ((string name, Action batch) in rows)
        {
            for (int w = 0; w < warmups; w++) Run(batch, batches);
            double[] ns = new double[runs];
            for (int r = 0; r < runs; r++)
            {
                long start = Stopwatch.GetTimestamp();
                Run(batch, batches);
                ns[r] = Stopwatch.GetElapsedTime(start).TotalNanoseconds / ((double)batches * Blocks);
            }
            Array.Sort(ns);
            Console.WriteLine($"| {name} | {Median(ns).ToString("F2", inv)} | {ns[0].ToString("F2", inv)} | {ns[^1].ToString("F2", inv)} |");
        }
        Console.WriteLine();
        return 0;
    }

    /// <summary>One run: <paramref name="batches"/> batches.</summary>
    private static void Run(Action batch, int batches)
    {
        for (int b = 0; b < batches; b++) batch();
    }

    /// <summary>One batch of AllocFreeBenchmarks.RunHeap: allocate every size, then free in the same order.</summary>
    private static void HeapBatch(NativeHeap heap, int[] sizes, BlockHandle[] handles, BlockKind kind)
    {
        for (int i = 0; i < sizes.Length; i++) handles[i] = heap.Allocate(sizes[i], kind);
        for (int i = 0; i < sizes.Length; i++) heap.Free(handles[i]);
    }

    /// <summary>The same batch through the thread-bound context (what the C ABI will run).</summary>
    private static void ContextBatch(NativeHeap heap, int[] sizes, BlockHandle[] handles)
    {
        HeapContext ctx = heap.GetThreadContext();
        for (int i = 0; i < sizes.Length; i++) handles[i] = ctx.Allocate(sizes[i]);
        for (int i = 0; i < sizes.Length; i++) ctx.Free(handles[i]);
    }

    /// <summary>One batch of AllocFreeBenchmarks.Glibc: the reference row.</summary>
    private static void GlibcBatch(int[] sizes, nint[] p)
    {
        for (int i = 0; i < sizes.Length; i++) p[i] = (nint)NativeMemory.Alloc((nuint)sizes[i]);
        for (int i = 0; i < sizes.Length; i++) NativeMemory.Free((void*)p[i]);
    }

    /// <summary>The median of a sorted array.</summary>
    private static double Median(double[] sorted) =>
        sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
}
