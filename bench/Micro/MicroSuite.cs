using System.Globalization;
using System.Reflection;
using System.Text;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Perfolizer.Horology;

namespace Compaction.Bench.Micro;

/// <summary>
/// The <c>micro</c> command: runs the BenchmarkDotNet classes (all peers of a class in one run, so the ratios come
/// from one summary) and writes a markdown table of medians to bench/results.
/// </summary>
/// <remarks>
/// <para>Full run: one launch, 3 warmup and 15 measured iterations of ~100 ms each, out of process (a child per
/// benchmark, started with GLIBC_TUNABLES set so jemalloc loads). About 2.5 minutes on 2 cores.</para>
/// <para><c>--smoke</c>: BenchmarkDotNet's Dry job (one invoke, no warmup) in process: proves every benchmark still
/// runs, in seconds; its numbers mean nothing. Writes micro-smoke.md, never micro.md.</para>
/// </remarks>
public static class MicroSuite
{
    public static readonly Type[] Classes = [typeof(SmallAllocFree), typeof(MediumAllocFree), typeof(PinUnpin), typeof(HandleResolve)];

    private static readonly Dictionary<Type, string> s_concerns = new()
    {
        [typeof(SmallAllocFree)] = "allocate + free, seeded sizes 16-256 B, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(MediumAllocFree)] = "allocate + free, seeded sizes 4-64 KiB, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(PinUnpin)] = "pin + read first byte + unpin over 1000 blocks of 64 B; ns per pin+unpin",
        [typeof(HandleResolve)] = "reach a block's bytes (or size) through its handle vs a raw pointer, 1000 blocks of 64 B; ns per block",
    };

    private const string Usage = "usage: micro [--smoke] [--filter GLOB]... [--out FILE]   (GLOB matches Namespace.Class.Method, e.g. '*Small*' or '*Pin*')";

    public static int Run(string[] args)
    {
        bool smoke = false;
        var filters = new List<string>();
        string? outPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--smoke": smoke = true; break;
                case "--filter" when i + 1 < args.Length: filters.Add(args[++i]); break;
                case "--out" when i + 1 < args.Length: outPath = args[++i]; break;
                default:
                    Console.Error.WriteLine($"micro: unknown or incomplete argument '{args[i]}'");
                    Console.Error.WriteLine(Usage);
                    return 2;
            }
        }

        string benchDir = Paths.BenchDirectory();
        outPath ??= Path.Combine(benchDir, "results", smoke ? "micro-smoke.md" : filters.Count > 0 ? "micro-filtered.md" : "micro.md");

        Job job = smoke
            ? Job.Dry.WithToolchain(InProcessEmitToolchain.Instance).WithId("Smoke")
            : Job.Default.WithId("Short")
                .WithLaunchCount(1)
                .WithWarmupCount(3)
                .WithIterationCount(15)
                .WithIterationTime(TimeInterval.FromMilliseconds(100))
                // jemalloc uses static TLS: the child that loads it must start with this tunable.
                .WithEnvironmentVariables(new EnvironmentVariable(Peers.TunablesVariable, Peers.TunablesWithJemalloc()));

        ManualConfig config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(job)
            .AddDiagnoser(MemoryDiagnoser.Default)
            .AddFilter(new SimpleFilter(PeerIsAvailable))
            .WithArtifactsPath(Path.Combine(benchDir, "BenchmarkDotNet.Artifacts"));
        if (filters.Count > 0) config.AddFilter(new GlobFilter([.. filters]));

        Console.WriteLine($"micro: {(smoke ? "smoke (Dry job, in process)" : "Short job (1 launch, 3 warmup, 15 iterations of 100 ms)")}" +
                          $"{(filters.Count > 0 ? ", filter " + string.Join(" ", filters) : "")}; summary -> {outPath}");
        string? loadBefore = RunInfo.LoadAverage();
        Summary[] summaries = BenchmarkRunner.Run(Classes, config);
        string? loadAfter = RunInfo.LoadAverage();

        string command = "dotnet run -c Release --project bench -- micro" + (smoke ? " --smoke" : "") +
                         string.Concat(filters.Select(f => $" --filter '{f}'"));
        string markdown = Render(summaries, smoke, command, loadBefore, loadAfter);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
        File.WriteAllText(outPath, markdown);
        Console.WriteLine();
        Console.WriteLine(markdown);
        Console.WriteLine($"micro: wrote {outPath}");

        int ran = summaries.Sum(s => s.Reports.Length);
        int failed = summaries.Sum(s => s.Reports.Count(r => !r.Success || r.ResultStatistics == null))
                     + summaries.Count(s => s.HasCriticalValidationErrors);
        if (ran == 0) { Console.Error.WriteLine("micro: no benchmark ran (check --filter)"); return 1; }
        if (failed > 0) { Console.Error.WriteLine($"micro: {failed} benchmark(s) failed"); return 1; }
        return 0;
    }

    /// <summary>Leaves out benchmarks whose peer cannot be loaded in this process (the reason is printed once).</summary>
    private static bool PeerIsAvailable(BenchmarkCase bc)
    {
        PeerAttribute? peer = bc.Descriptor.WorkloadMethod.GetCustomAttribute<PeerAttribute>();
        return peer == null || Peers.IsAvailable(peer.Name);
    }

    private static string Render(Summary[] summaries, bool smoke, string command, string? loadBefore, string? loadAfter)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(smoke ? "# Micro benchmarks (SMOKE run: one invoke each, numbers are meaningless)" : "# Micro benchmarks");
        sb.AppendLine();
        sb.AppendLine($"Generated {DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", inv)} UTC by `{command}`, core at {RunInfo.CoreRevision()}.");
        sb.AppendLine(smoke
            ? "Job: BenchmarkDotNet Dry (1 invoke, no warmup), InProcessEmitToolchain."
            : "Job: 1 launch, 3 warmup + 15 measured iterations of ~100 ms, one child process per benchmark (GLIBC_TUNABLES set for jemalloc).");
        sb.AppendLine();
        sb.AppendLine("Median = median over the measured iterations, in ns per operation (OperationsPerInvoke is applied).");
        sb.AppendLine("*vs baseline* = median / the class's baseline median (the baseline row is in **bold**); " +
                      "*vs mimalloc* = median / the plain `mimalloc` row's median. *Managed B/op* = GC-heap bytes allocated per operation (MemoryDiagnoser).");
        sb.AppendLine();
        sb.AppendLine("```");
        foreach (string line in summaries.FirstOrDefault()?.HostEnvironmentInfo.ToFormattedString() ?? []) sb.AppendLine(line);
        if (loadBefore != null) sb.AppendLine($"Load average (1/5/15 min) before the run: {loadBefore}; after: {loadAfter}");
        sb.AppendLine("```");

        IReadOnlyDictionary<string, string> skipped = Peers.Skipped;
        if (skipped.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("Skipped peers:");
            foreach ((string name, string why) in skipped) sb.AppendLine($"- {name}: {why}");
        }

        foreach (Summary summary in summaries)
        {
            if (summary.Reports.Length == 0) continue;
            Type type = summary.BenchmarksCases[0].Descriptor.Type;
            sb.AppendLine();
            sb.AppendLine($"## {type.Name}");
            sb.AppendLine();
            if (s_concerns.TryGetValue(type, out string? concern)) sb.AppendLine(concern + ".").AppendLine();

            BenchmarkReport? baseline = summary.Reports.FirstOrDefault(r => r.BenchmarkCase.Descriptor.Baseline);
            BenchmarkReport? mimalloc = summary.Reports.FirstOrDefault(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == "Mimalloc");
            double? baseMedian = baseline?.ResultStatistics?.Median;
            double? miMedian = mimalloc?.ResultStatistics?.Median;
            bool hasMimallocColumn = type.IsSubclassOf(typeof(AllocFreeBenchmarks));

            sb.AppendLine(hasMimallocColumn
                ? "| Benchmark | Median ns/op | vs baseline | vs mimalloc | Managed B/op |\n|---|---:|---:|---:|---:|"
                : "| Benchmark | Median ns/op | vs baseline | Managed B/op |\n|---|---:|---:|---:|");
            foreach (BenchmarkReport r in summary.Reports)
            {
                string name = r.BenchmarkCase.Descriptor.WorkloadMethodDisplayInfo.Trim('\'');
                if (r.BenchmarkCase.Descriptor.Baseline) name = $"**{name}**";
                double? median = r.ResultStatistics?.Median;
                string med = median is double m ? m.ToString(m < 100 ? "F2" : "F1", inv) : "failed";
                string vsBase = Ratio(median, baseMedian, inv);
                string vsMi = Ratio(median, miMedian, inv);
                long? bytes = r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase);
                string alloc = bytes is long b ? b.ToString(inv) : "?";
                sb.AppendLine(hasMimallocColumn
                    ? $"| {name} | {med} | {vsBase} | {vsMi} | {alloc} |"
                    : $"| {name} | {med} | {vsBase} | {alloc} |");
            }
        }
        return sb.ToString();
    }

    private static string Ratio(double? value, double? reference, IFormatProvider inv) =>
        value is double v && reference is double r && r > 0 ? (v / r).ToString("F2", inv) : "n/a";
}
