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
    public static readonly Type[] Classes =
    [
        typeof(SmallAllocFree), typeof(SubPageAllocFree), typeof(MediumAllocFree), typeof(LargeAllocFree),
        typeof(ThreadedOwnBlocks), typeof(ThreadedProducerConsumer), typeof(ThreadedLarson), typeof(ThreadedXmalloc),
        typeof(PinUnpin), typeof(HandleResolve),
    ];

    private static readonly Dictionary<Type, string> s_concerns = new()
    {
        [typeof(SmallAllocFree)] = "allocate + free, seeded sizes 16-256 B, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(SubPageAllocFree)] = "allocate + free, seeded sizes 256 B-4 KiB, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(MediumAllocFree)] = "allocate + free, seeded sizes 4-64 KiB, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(LargeAllocFree)] = "allocate + free, seeded sizes 64 KiB-1 MiB, 1000 blocks live per batch; ns per allocate+free pair",
        [typeof(ThreadedOwnBlocks)] = "1 or 2 threads, each allocating 1000 blocks of its own seeded sizes 16-256 B then freeing them, " +
                                      "200k pairs per invoke over all threads; ns per allocate+free pair over all threads. " +
                                      "*Scaling* = ns(Threads=1) / ns(Threads=2) of the same allocator (2-thread throughput / 1-thread throughput; 2.00 is perfect)",
        [typeof(ThreadedProducerConsumer)] = "thread 0 allocates (seeded 16-256 B) and pushes into a 1024-slot SPSC ring, thread 1 pops and frees; ns per pair",
        [typeof(ThreadedLarson)] = "Larson-style: 2 threads x 1000 slots, each step frees a random slot and allocates 16-256 B into it; " +
                                   "the threads swap slot arrays every 1000 steps (cross-thread frees); ns per free+allocate step",
        [typeof(ThreadedXmalloc)] = "xmalloc-test-style: thread 0 allocates batches of 100 (seeded 16-256 B), thread 1 frees them; " +
                                    "batches go back and forth through SPSC rings, 10 in flight; ns per allocate+free pair",
        [typeof(PinUnpin)] = "pin + read first byte + unpin over 1000 blocks of 64 B; ns per pin+unpin",
        [typeof(HandleResolve)] = "reach a block's bytes (or size) through its handle vs a raw pointer, 1000 blocks of 64 B; ns per block",
    };

    /// <summary>The second job, run only on the NativeHeap rows of <see cref="SmallAllocFree"/>: DOTNET_TieredPGO=0
    /// in the child's environment, so the row shows what dynamic PGO adds to (or takes from) the fast path.</summary>
    private const string NoPgoJobId = "TieredPGO-off";
    private static readonly string[] s_noPgoMethods = [nameof(AllocFreeBenchmarks.NativeHeapMovable), nameof(AllocFreeBenchmarks.NativeHeapUnmovable), nameof(AllocFreeBenchmarks.NativeHeapMovableContext)];

    private const string Usage = "usage: micro [--smoke] [--filter GLOB]... [--launches N] [--out FILE]   (GLOB matches Namespace.Class.Method, e.g. '*Small*' or '*Pin*')";

    public static int Run(string[] args)
    {
        bool smoke = false;
        var filters = new List<string>();
        string? outPath = null;
        int launches = 1;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--smoke": smoke = true; break;
                case "--filter" when i + 1 < args.Length: filters.Add(args[++i]); break;
                case "--out" when i + 1 < args.Length: outPath = args[++i]; break;
                // More processes per benchmark: the threaded rows differ between processes more than between iterations.
                case "--launches" when i + 1 < args.Length && int.TryParse(args[i + 1], out int n) && n >= 1: launches = n; i++; break;
                default:
                    Console.Error.WriteLine($"micro: unknown or incomplete argument '{args[i]}'");
                    Console.Error.WriteLine(Usage);
                    return 2;
            }
        }

        string benchDir = Paths.BenchDirectory();
        string? outArgument = outPath;
        outPath ??= Path.Combine(benchDir, "results", smoke ? "micro-smoke.md" : filters.Count > 0 ? "micro-filtered.md" : "micro.md");

        Job job = smoke
            ? Job.Dry.WithToolchain(InProcessEmitToolchain.Instance).WithId("Smoke")
            : Job.Default.WithId("Short")
                .WithLaunchCount(launches)
                .WithWarmupCount(3)
                .WithIterationCount(15)
                .WithIterationTime(TimeInterval.FromMilliseconds(100))
                // jemalloc uses static TLS: the child that loads it must start with this tunable.
                .WithEnvironmentVariables(new EnvironmentVariable(Peers.TunablesVariable, Peers.TunablesWithJemalloc()));

        ManualConfig config = BaseConfig(job, benchDir, filters);
        // Smoke runs in process, where an environment variable cannot switch the JIT's PGO: the row runs, unswitched.
        Job noPgoJob = smoke
            ? job.WithId(NoPgoJobId)
            : job.WithId(NoPgoJobId).WithEnvironmentVariables(
                new EnvironmentVariable(Peers.TunablesVariable, Peers.TunablesWithJemalloc()),
                new EnvironmentVariable("DOTNET_TieredPGO", "0"));
        ManualConfig noPgoConfig = BaseConfig(noPgoJob, benchDir, filters)
            .AddFilter(new SimpleFilter(bc => s_noPgoMethods.Contains(bc.Descriptor.WorkloadMethod.Name)));

        Console.WriteLine($"micro: {(smoke ? "smoke (Dry job, in process)" : $"Short job ({launches} launch(es), 3 warmup, 15 iterations of 100 ms)")}" +
                          $"{(filters.Count > 0 ? ", filter " + string.Join(" ", filters) : "")}; summary -> {outPath}");
        BenchmarkRunInfo[] runs =
        [
            .. Classes.Select(t => BenchmarkConverter.TypeToBenchmarks(t, config)),
            BenchmarkConverter.TypeToBenchmarks(typeof(SmallAllocFree), noPgoConfig),
        ];
        runs = [.. runs.Where(r => r.BenchmarksCases.Length > 0)];
        if (runs.Length == 0) { Console.Error.WriteLine("micro: no benchmark ran (check --filter)"); return 1; }
        string? loadBefore = RunInfo.LoadAverage();
        RunInfo.CpuSample? cpuBefore = RunInfo.SampleCpu();
        Summary[] summaries = BenchmarkRunner.Run(runs);
        string? loadAfter = RunInfo.LoadAverage();
        string? othersCpu = RunInfo.OtherProcessesCpu(cpuBefore, RunInfo.SampleCpu());

        string command = "dotnet run -c Release --project bench -- micro" + (smoke ? " --smoke" : "") +
                         string.Concat(filters.Select(f => $" --filter '{f}'")) + (launches > 1 ? $" --launches {launches}" : "") + (outArgument != null ? $" --out {outArgument}" : "");
        string markdown = Render(summaries, smoke, launches, command, loadBefore, loadAfter, othersCpu);
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

    /// <summary>The suite's config around one job: MemoryDiagnoser, the peer filter, the --filter globs.</summary>
    private static ManualConfig BaseConfig(Job job, string benchDir, List<string> filters)
    {
        ManualConfig config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(job)
            .AddDiagnoser(MemoryDiagnoser.Default)
            .AddFilter(new SimpleFilter(PeerIsAvailable))
            .WithArtifactsPath(Path.Combine(benchDir, "BenchmarkDotNet.Artifacts"));
        if (filters.Count > 0) config.AddFilter(new GlobFilter([.. filters]));
        return config;
    }

    /// <summary>Leaves out benchmarks whose peer cannot be loaded in this process (the reason is printed once).</summary>
    private static bool PeerIsAvailable(BenchmarkCase bc)
    {
        PeerAttribute? peer = bc.Descriptor.WorkloadMethod.GetCustomAttribute<PeerAttribute>();
        return peer == null || Peers.IsAvailable(peer.Name);
    }

    private static string Render(Summary[] summaries, bool smoke, int launches, string command, string? loadBefore, string? loadAfter, string? othersCpu)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(smoke ? "# Micro benchmarks (SMOKE run: one invoke each, numbers are meaningless)" : "# Micro benchmarks");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Generated {DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", inv)} UTC by `{command}`, core at {RunInfo.CoreRevision()}.");
        sb.AppendLine(smoke
            ? "Job: BenchmarkDotNet Dry (1 invoke, no warmup), InProcessEmitToolchain (the TieredPGO=0 rows run in this process too: PGO is not switched off)."
            : $"Job: {launches} launch(es), 3 warmup + 15 measured iterations of ~100 ms each, one child process per benchmark and launch (GLIBC_TUNABLES set for jemalloc).");
        sb.AppendLine();
        sb.AppendLine("Median = median over the measured iterations, in ns per operation (OperationsPerInvoke is applied).");
        sb.AppendLine("*vs baseline* = median / the class's baseline median (the baseline row is in **bold**); " +
                      "*x mimalloc* and *x tcmalloc* = median / the plain `mimalloc` (`tcmalloc`) row's median with the same parameters. " +
                      "*Managed B/op* = GC-heap bytes allocated per operation (MemoryDiagnoser, all threads). " +
                      "Rows marked *TieredPGO=0* ran in a second job with `DOTNET_TieredPGO=0` in the child's environment.");
        sb.AppendLine();
        sb.AppendLine("```");
        foreach (string line in summaries.FirstOrDefault()?.HostEnvironmentInfo.ToFormattedString() ?? []) sb.AppendLine(line);
        if (loadBefore != null) sb.AppendLine(CultureInfo.InvariantCulture, $"Load average (1/5/15 min) before the run: {loadBefore}; after: {loadAfter}");
        // Anything else running on these 2 cores distorts the threaded rows first.
        if (othersCpu != null) sb.AppendLine(CultureInfo.InvariantCulture, $"CPU used by other processes during the run: {othersCpu}");
        sb.AppendLine("```");

        IReadOnlyDictionary<string, string> skipped = Peers.Skipped;
        if (skipped.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("Skipped peers:");
            foreach ((string name, string why) in skipped) sb.AppendLine(CultureInfo.InvariantCulture, $"- {name}: {why}");
        }

        // Reports grouped by class, in the order of Classes: a class may come back in two summaries (its second job).
        BenchmarkReport[] all = [.. summaries.SelectMany(s => s.Reports)];
        foreach (Type type in Classes)
        {
            BenchmarkReport[] reports = [.. all.Where(r => r.BenchmarkCase.Descriptor.Type == type)];
            if (reports.Length == 0) continue;
            RenderClass(sb, type, reports, inv);
        }
        return sb.ToString();
    }

    /// <summary>One class's table: a row per report; ratios against the rows of the main job with the same
    /// parameters (baseline, mimalloc, tcmalloc, and the Threads=1 row of the same method for Scaling).</summary>
    private static void RenderClass(StringBuilder sb, Type type, BenchmarkReport[] reports, IFormatProvider inv)
    {
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"## {type.Name}");
        sb.AppendLine();
        if (s_concerns.TryGetValue(type, out string? concern)) sb.AppendLine(concern + ".").AppendLine();

        BenchmarkReport[] main = [.. reports.Where(r => r.BenchmarkCase.Job.Id != NoPgoJobId)];
        double? MedianOf(Func<BenchmarkReport, bool> which, BenchmarkReport like) =>
            main.FirstOrDefault(o => which(o) && SameParameters(o, like))?.ResultStatistics?.Median;

        bool peerColumns = type.GetMethod("Mimalloc") != null || type.GetMethod("Tcmalloc") != null;
        bool scaling = reports.Any(r => r.BenchmarkCase.Parameters.Items.Any(p => p.Name == ThreadsParameter));
        sb.Append("| Benchmark | Median ns/op | vs baseline |");
        if (peerColumns) sb.Append(" x mimalloc | x tcmalloc |");
        if (scaling) sb.Append(" Scaling |");
        sb.AppendLine(" Managed B/op |");
        sb.Append("|---|---:|---:|");
        if (peerColumns) sb.Append("---:|---:|");
        if (scaling) sb.Append("---:|");
        sb.AppendLine("---:|");

        foreach (BenchmarkReport r in reports)
        {
            double? median = r.ResultStatistics?.Median;
            sb.Append(CultureInfo.InvariantCulture, $"| {RowName(r)} | {(median is double m ? m.ToString(m < 100 ? "F2" : "F1", inv) : "failed")} ");
            sb.Append(CultureInfo.InvariantCulture, $"| {Ratio(median, MedianOf(o => o.BenchmarkCase.Descriptor.Baseline, r), inv)} |");
            if (peerColumns)
                sb.Append(CultureInfo.InvariantCulture, $" {Ratio(median, MedianOf(o => MethodName(o) == "Mimalloc", r), inv)} " +
                          $"| {Ratio(median, MedianOf(o => MethodName(o) == "Tcmalloc", r), inv)} |");
            if (scaling)
            {
                // The 1-thread row of the same allocator over this row: how much more throughput the second thread gives.
                double? oneThread = main.FirstOrDefault(o => MethodName(o) == MethodName(r) && Threads(o) == 1)?.ResultStatistics?.Median;
                sb.Append(Threads(r) is int t && t > 1 ? $" {Ratio(oneThread, median, inv)} |" : " - |");
            }
            long? bytes = r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase);
            sb.AppendLine(CultureInfo.InvariantCulture, $" {(bytes is long b ? b.ToString(inv) : "?")} |");
        }
    }

    private const string ThreadsParameter = "Threads";

    /// <summary>The row's label: the method's description, its parameters, and the second job's name if it is that job's.</summary>
    private static string RowName(BenchmarkReport r)
    {
        string name = r.BenchmarkCase.Descriptor.WorkloadMethodDisplayInfo.Trim('\'');
        if (r.BenchmarkCase.HasParameters) name += ", " + string.Join(", ", r.BenchmarkCase.Parameters.Items.Select(p => $"{p.Name}={p.Value}"));
        if (r.BenchmarkCase.Job.Id == NoPgoJobId) name += ", TieredPGO=0";
        return r.BenchmarkCase.Descriptor.Baseline && r.BenchmarkCase.Job.Id != NoPgoJobId ? $"**{name}**" : name;
    }

    private static string MethodName(BenchmarkReport r) => r.BenchmarkCase.Descriptor.WorkloadMethod.Name;

    private static int? Threads(BenchmarkReport r) =>
        r.BenchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == ThreadsParameter)?.Value as int?;

    private static bool SameParameters(BenchmarkReport a, BenchmarkReport b) =>
        a.BenchmarkCase.Parameters.DisplayInfo == b.BenchmarkCase.Parameters.DisplayInfo;

    private static string Ratio(double? value, double? reference, IFormatProvider inv) =>
        value is double v && reference is double r && r > 0 ? (v / r).ToString("F2", inv) : "n/a";
}
