using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using Compaction.Bench.Scenarios;

namespace Compaction.Bench.Footprint;

/// <summary>
/// The <c>footprint</c> command: resident memory over time on three service workloads (<see cref="FootprintWorkload"/>),
/// each allocator × workload × repetition in a child process of its own (<see cref="FootprintChild"/>), because
/// allocators in one process share pages (and glibc's heap holds the runtime's memory too). The parent only starts
/// the children, reads their files, takes medians and writes bench/results/footprint.md (footprint-quick.md under
/// <c>--quick</c>) with one SVG plot per workload: peak RSS (5 ms samples and the kernel's VmHWM per phase), RSS at rest
/// after the last step, and each workload's operations per second.
/// </summary>
public static class FootprintSuite
{
    private const string Usage = "usage: footprint [--quick] [--seed N] [--reps N] [--only mesh,redis,burst] [--allocators A,B] [--limit-factor F] [--out FILE]";

    /// <summary>The limit row's MemoryLimit over the workload's peak live bytes, unless <c>--limit-factor</c> says otherwise.</summary>
    private const double DefaultLimitFactor = 1.25;
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>RSS/live the background row is timed to reach.</summary>
    private const double TargetRatio = 1.3;

    public static int Run(string[] args)
    {
        bool quick = false;
        int seed = Random.Shared.Next(), reps = -1;
        string? outPath = null;
        double limitFactor = DefaultLimitFactor;
        var only = new List<string>();
        var allocatorsOnly = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string? v = i + 1 < args.Length ? args[i + 1] : null;
            switch (args[i])
            {
                case "--quick": quick = true; break;
                case "--seed" when int.TryParse(v, NumberStyles.Integer, Inv, out seed): i++; break;
                case "--reps" when int.TryParse(v, NumberStyles.Integer, Inv, out reps) && reps > 0: i++; break;
                case "--only" when v != null:
                    only.AddRange(v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                    i++;
                    break;
                case "--allocators" when v != null:
                    allocatorsOnly.AddRange(v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                    i++;
                    break;
                case "--limit-factor" when double.TryParse(v, NumberStyles.Float, Inv, out limitFactor) && limitFactor >= 0: i++; break;
                case "--out" when v != null: outPath = v; i++; break;
                default:
                    Console.Error.WriteLine($"footprint: unknown option or missing value: {args[i]}");
                    Console.Error.WriteLine(Usage);
                    return 2;
            }
        }
        if (only.Any(n => !FootprintWorkload.Names.Contains(n)))
        {
            Console.Error.WriteLine($"footprint: unknown workload(s) {string.Join(", ", only.Where(n => !FootprintWorkload.Names.Contains(n)))}");
            Console.Error.WriteLine(Usage);
            return 2;
        }
        if (allocatorsOnly.Any(n => !FootprintAllocator.Names.Contains(n)))
        {
            Console.Error.WriteLine($"footprint: unknown allocator(s) {string.Join(", ", allocatorsOnly.Where(n => !FootprintAllocator.Names.Contains(n)))}; " +
                                    $"known: {string.Join(", ", FootprintAllocator.Names)}");
            Console.Error.WriteLine(Usage);
            return 2;
        }
        if (reps < 0) reps = quick ? 1 : 3;
        int scale = quick ? 8 : 1;
        string[] workloads = only.Count > 0 ? [.. FootprintWorkload.Names.Where(only.Contains)] : FootprintWorkload.Names;
        string[] allocators = [.. FootprintAllocator.Names.Where(a => (allocatorsOnly.Count == 0 || allocatorsOnly.Contains(a)) &&
                                                                     (a != FootprintAllocator.NativeLimit || limitFactor > 0))];

        string command = "dotnet run -c Release --project bench -- footprint" + (args.Length > 0 ? " " + string.Join(' ', args) : "");
        string repeat = "dotnet run -c Release --project bench -- footprint" + (quick ? " --quick" : "") + $" --seed {seed} --reps {reps}" +
                        (only.Count > 0 ? $" --only {string.Join(',', workloads)}" : "") +
                        (allocatorsOnly.Count > 0 ? $" --allocators {string.Join(',', allocators)}" : "") +
                        (limitFactor != DefaultLimitFactor ? string.Create(Inv, $" --limit-factor {limitFactor}") : "");
        Console.WriteLine($"footprint: seed {seed}, {reps} rep(s), windows {string.Join(", ", workloads.Select(w => $"{w} {FootprintWorkload.WindowMs(w, quick) / 1000} s"))} " +
                          $"(repeat with: {repeat}){(quick ? "; QUICK run" : "")}");

        string? loadBefore = RunInfo.LoadAverage();
        var total = Stopwatch.StartNew();
        string dir = Path.Combine(Path.GetTempPath(), $"footprint-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var runs = new Dictionary<(string W, string A), List<FootprintFile>>();
        var skipped = new Dictionary<string, string>();
        var failures = new List<string>();
        try
        {
            foreach (string w in workloads)
                for (int rep = 0; rep < reps; rep++)
                    foreach (string a in allocators)
                    {
                        if (skipped.ContainsKey(a)) continue;
                        string file = Path.Combine(dir, $"{w}-{a}-{rep}.csv");
                        var sw = Stopwatch.StartNew();
                        int rc = StartChild(w, a, seed + rep, scale, FootprintWorkload.WindowMs(w, quick), limitFactor, file);
                        FootprintFile? f = File.Exists(file) ? FootprintFile.Read(file) : null;
                        string status = f?.Get("status") ?? "no output";
                        if (rc == 3 || status == "skipped")
                        {
                            skipped[a] = f?.Get("error") ?? "not available";
                            Console.WriteLine($"  {a} SKIPPED: {skipped[a]}");
                            continue;
                        }
                        if (rc != 0 || f == null || status != "ok")
                            failures.Add($"{w}/{a} rep {rep}: exit code {rc}, {status}" + (f?.Get("error") is string e ? $" ({e})" : "") +
                                         (f?.Get("corrupt") is string c && c != "0" ? $", {c} corrupt block(s)" : ""));
                        if (f == null || f.Get("liveBytes") == null) continue;
                        if (!runs.TryGetValue((w, a), out List<FootprintFile>? list)) runs[(w, a)] = list = [];
                        list.Add(f);
                        Figures g = Figures.Of(f);
                        Console.WriteLine(string.Create(Inv, $"  {w,-5} {a,-17} rep {rep}: live {g.LiveMib:F1} MiB, peak RSS {g.PeakRssMib:F1} MiB " +
                                          $"= {g.PeakRatio:F2} x peak live at {g.PeakTimeS:F2} s ({g.PeakPhase}), {g.OpsPerSec / 1e3:F0} k ops/s, " +
                                          $"no call {g.NoCall:F2}, settled {g.Settled:F2}") +
                                          (f.Number("mayFail") == 1 ? $", {Fmt.N((long)f.Number("failedAllocations"))} failed allocation(s)" : "") +
                                          (double.IsNaN(g.AfterCall) ? "" : string.Create(Inv, $", after Compact+Release {g.AfterCall:F2} ({g.CallMs:F0} ms)")) +
                                          (double.IsNaN(g.AfterTrim) ? "" : string.Create(Inv, $", after trim {g.AfterTrim:F2}")) +
                                          string.Create(Inv, $", {f.Get("corrupt")} corrupt ({sw.Elapsed.TotalSeconds:F1} s)"));
                    }
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
        total.Stop();

        string resultsDir = Path.Combine(Paths.BenchDirectory(), "results");
        string md = outPath ?? Path.Combine(resultsDir, quick ? "footprint-quick.md" : "footprint.md");
        string mdDir = Path.GetDirectoryName(Path.GetFullPath(md))!;
        Directory.CreateDirectory(mdDir);
        // The plots are named after the report (footprint-redis.svg beside footprint.md, footprint-limit-redis.svg
        // beside footprint-limit.md), so that a run with --out never redraws another report's plots.
        string svgPrefix = Path.GetFileNameWithoutExtension(md) + "-";
        foreach (string w in workloads)
            File.WriteAllText(Path.Combine(mdDir, $"{svgPrefix}{w}.svg"), Plot(w, runs));
        string markdown = Render(quick, reps, seed, scale, limitFactor, command, repeat, workloads, allocators, runs, skipped, failures, total.Elapsed,
                                 loadBefore, RunInfo.LoadAverage(), svgPrefix);
        File.WriteAllText(md, markdown);
        Console.WriteLine();
        Console.WriteLine(markdown);
        Console.WriteLine($"footprint: wrote {md} and {workloads.Length} SVG plot(s) in {total.Elapsed.TotalSeconds:F1} s (seed {seed})");
        foreach (string f in failures) Console.Error.WriteLine($"footprint: FAILED {f}");
        return failures.Count == 0 ? 0 : 1;
    }

    /// <summary>Starts this program again as <c>footprint-child</c> (the apphost, or <c>dotnet</c> with the assembly),
    /// with jemalloc's tunable in the environment of the jemalloc child, DOTNET_gcServer=1 in the gc-server child's (0 in
    /// every other), the limit factor for the limit row, and waits for it (at most 15 minutes).</summary>
    private static int StartChild(string workload, string allocator, int seed, int scale, int windowMs, double limitFactor, string outFile)
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to start the child with");
        string? assembly = Assembly.GetEntryAssembly()?.Location;
        var psi = new ProcessStartInfo(process) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(process) == "dotnet" && !string.IsNullOrEmpty(assembly)) psi.ArgumentList.Add(assembly);
        foreach (string a in new[]
                 {
                     FootprintChild.Command, "--workload", workload, "--allocator", allocator, "--seed", seed.ToString(Inv),
                     "--scale", scale.ToString(Inv), "--window-ms", windowMs.ToString(Inv), "--out", outFile,
                 })
            psi.ArgumentList.Add(a);
        if (allocator == FootprintAllocator.NativeLimit)
        {
            psi.ArgumentList.Add("--limit-factor");
            psi.ArgumentList.Add(limitFactor.ToString("R", Inv));
        }
        if (allocator == Peers.Jemalloc) psi.Environment[Peers.TunablesVariable] = Peers.TunablesWithJemalloc();
        psi.Environment["DOTNET_gcServer"] = allocator == FootprintAllocator.GcServer ? "1" : "0";
        using Process child = Process.Start(psi)!;
        if (!child.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            child.Kill(entireProcessTree: true);
            child.WaitForExit();
            return -1;
        }
        return child.ExitCode;
    }

    /// <summary>One run's figures. Ratios are RSS over the workload's live bytes at its end, except <see cref="PeakRatio"/>:
    /// the peak RSS over the most bytes the workload had live at once (its own count, the same for every allocator given
    /// the seed, unless a limited heap refused blocks). <see cref="PeakTimeS"/>: seconds from the workload's start to
    /// the highest 5 ms sample. <see cref="OpsPerSec"/>: allocations (each written) and frees per second over the workload.</summary>
    private sealed record Figures(double LiveMib, double PeakLiveMib, double PeakRssMib, double PeakRatio, double PeakTimeS, string PeakPhase,
                                  double NoCall, double AfterCall, double CallMs, double CallSpikeMib, double At1s, double At5s, double Settled,
                                  double BelowTargetS, double SpikeAfterMib, double AfterTrim, double Failed, double OpsPerSec, double PeakOverLimit)
    {
        public static Figures Of(FootprintFile f)
        {
            double live = f.Number("liveBytes"), end = f.Number("workloadEndMs"), windowEnd = f.Number("windowEndMs");
            const double mib = 1 << 20;
            double sampledPeakLive = f.Samples.Where(s => s.Ms <= end).Select(s => (double)s.Live).DefaultIfEmpty(0).Max();
            double peakLive = Math.Max(live, double.IsNaN(f.Number("peakLiveBytes")) ? sampledPeakLive : f.Number("peakLiveBytes"));
            double At(double afterMs)
            {
                foreach (RssSample s in f.Samples)
                    if (s.Ms >= end + afterMs) return s.Ms <= windowEnd ? s.Rss / live : double.NaN;
                return double.NaN;
            }
            double below = double.PositiveInfinity;
            foreach (RssSample s in f.Samples)
                if (s.Ms >= end && s.Ms <= windowEnd && s.Rss < TargetRatio * live) { below = (s.Ms - end) / 1000; break; }
            if (f.Number("rssNoCall") < TargetRatio * live) below = 0;
            // VmHWM follows the kernel's per-CPU RSS counters, which lag a little: never below a reading.
            RssSample top = default;
            foreach (RssSample s in f.Samples)
                if (s.Ms <= end && s.Rss > top.Rss) top = s;
            double peakRss = Math.Max(f.Number("rssPeakWorkload"), Math.Max(f.Number("rssNoCall"), top.Rss));
            double peakAfter = Math.Max(f.Number("rssPeakAfterWorkload"),
                                        f.Samples.Where(s => s.Ms >= end && s.Ms <= windowEnd).Select(s => (double)s.Rss).DefaultIfEmpty(0).Max());
            double start = f.Phases.Count > 0 ? f.Phases[0].StartMs : 0;
            var workloadPhases = f.Ops.Select(o => o.Phase).ToHashSet();
            // A phase starts at the RSS its predecessor ended with, so a later phase can tie with the one that reached the
            // peak: the peak's phase is the first within 1% (or 256 KiB) of the highest.
            long kernelTopBytes = f.Phases.Where(p => workloadPhases.Contains(p.Name)).Select(p => p.PeakBytes).DefaultIfEmpty(-1).Max();
            string kernelTopName = f.Phases.Where(p => workloadPhases.Contains(p.Name) && p.PeakBytes >= 0 &&
                                                       p.PeakBytes >= kernelTopBytes - Math.Max(256 << 10, kernelTopBytes / 100))
                                           .Select(p => p.Name).FirstOrDefault() ?? "-";
            string peakPhase = kernelTopBytes >= 0 ? kernelTopName
                             : top.Phase >= 0 && top.Phase < f.Phases.Count ? f.Phases[top.Phase].Name : "-";
            long ops = f.Ops.Sum(o => o.Allocs + o.Frees);
            double opsMs = f.Ops.Sum(o => o.Ms);
            return new Figures(
                live / mib,
                peakLive / mib,
                peakRss / mib,
                peakRss / peakLive,
                top.Rss > 0 ? (top.Ms - start) / 1000 : double.NaN,
                peakPhase,
                f.Number("rssNoCall") / live,
                f.Number("rssAfterCall") / live,
                f.Number("callMs"),
                (f.Number("rssCallPeak") - f.Number("rssCallStart")) / mib,
                At(1000),
                At(5000),
                f.Number("rssSettled") / live,
                below,
                (peakAfter - f.Number("rssNoCall")) / mib,
                f.Number("rssAfterTrim") / live,
                f.Number("failedAllocations"),
                opsMs > 0 ? ops * 1000.0 / opsMs : double.NaN,
                peakRss / f.Number("memoryLimit"));
        }
    }

    /// <summary>The median of a figure over the repetitions, NaN values (figures not taken) left out.</summary>
    private static double Median(List<FootprintFile> runs, Func<Figures, double> figure) =>
        Stats.Median(runs.Select(r => figure(Figures.Of(r))).Where(v => !double.IsNaN(v)));

    private static double MedianNumber(List<FootprintFile> runs, string key) =>
        Stats.Median(runs.Select(r => r.Number(key)).Where(v => !double.IsNaN(v)));

    private static string R(double v) => Fmt.F(v, 2);

    /// <summary>"median (min-max)" of a figure over the repetitions (just the median with one).</summary>
    private static string MedRange(List<FootprintFile> runs, Func<Figures, double> figure, int digits = 2)
    {
        var v = runs.Select(r => figure(Figures.Of(r))).Where(x => !double.IsNaN(x) && !double.IsInfinity(x)).ToList();
        if (v.Count == 0) return "n/a";
        string m = Fmt.F(Stats.Median(v), digits);
        return v.Count == 1 ? m : $"{m} ({Fmt.F(v.Min(), digits)}-{Fmt.F(v.Max(), digits)})";
    }

    /// <summary>A phase's operations per second in thousands, "median (min-max)".</summary>
    private static string PhaseRate(List<FootprintFile> runs, string phase)
    {
        var v = runs.Select(r => r.Ops.FirstOrDefault(o => o.Phase == phase).OpsPerSecond / 1e3).Where(x => !double.IsNaN(x)).ToList();
        if (v.Count == 0) return "n/a";
        string m = Fmt.F(Stats.Median(v), 0);
        return v.Count == 1 ? m : $"{m} ({Fmt.F(v.Min(), 0)}-{Fmt.F(v.Max(), 0)})";
    }

    private static string Render(bool quick, int reps, int seed, int scale, double limitFactor, string command, string repeat, string[] workloads,
                                 string[] allocators, Dictionary<(string W, string A), List<FootprintFile>> runs, Dictionary<string, string> skipped,
                                 List<string> failures, TimeSpan elapsed, string? loadBefore, string? loadAfter, string svgPrefix)
    {
        const string Ex = FootprintAllocator.NativeExplicit, Bg = FootprintAllocator.NativeBackground, Lim = FootprintAllocator.NativeLimit;
        string factor = limitFactor.ToString("0.##", Inv);
        var sb = new StringBuilder();
        sb.AppendLine(quick
            ? "# Resident memory over time (QUICK run: 1/8 of the bytes, 3 s idle windows; a smoke test, not the figures)"
            : "# Resident memory over time: three service workloads");
        sb.AppendLine();
        RunInfo.AppendProvenance(sb, command, elapsed, seed, repeat, loadBefore, loadAfter);
        sb.AppendLine($"Every allocator runs every workload in a child process of its own ({reps} repetition(s), seeds {seed}..{seed + reps - 1}; " +
                      "medians, with min-max where there are several), since allocators in one process would share pages. The child prepares its block list, a sample array and a " +
                      "sampler thread, runs the workload once at 1/256 of its size (JIT; NativeHeap on a heap of its own), then takes its baseline RSS " +
                      $"(after GC.Collect and malloc_trim) and runs the workload; a thread reads /proc/self/statm every {RssRecorder.IntervalMs} ms. RSS is the growth " +
                      "over that baseline, so the runtime's own memory is left out and the allocator's metadata counts; live = bytes requested " +
                      "by the surviving blocks (size-class rounding and object headers count against every allocator). After the workload's last step the child " +
                      $"stays idle for the window ({string.Join(", ", workloads.Select(w => $"{w} {FootprintWorkload.WindowMs(w, quick) / 1000} s"))}) and is then *settled*; " +
                      "peers then make their own trim call. " +
                      "Peaks: at the end of every phase the child reads the kernel's VmHWM and resets it (writing 5 to /proc/self/clear_refs), so each phase has " +
                      "its own peak and no spike escapes between samples; the peak is the larger of that and the highest sample. " +
                      "Every surviving block's bytes are verified at the end." + (scale > 1 ? $" Bytes and block counts are 1/{scale} of the full run's." : ""));
        sb.AppendLine();
        AppendHwmCheck(sb, runs);

        sb.AppendLine("## Summary");
        sb.AppendLine();
        var summary = new MarkdownTable("<Workload", "Live MiB", "Peak RSS / peak live: glibc", "best peer", "NativeHeap background",
                                        "<Background peak <= glibc's", "<Best peer RSS/live settled", "Best peer after its trim", "NativeHeap no call",
                                        "NativeHeap after explicit", "NativeHeap background, end of window", "<Background within 10% of explicit",
                                        "<No call <= best peer settled", "<Explicit spike <= start + 2 MiB");
        foreach (string w in workloads)
        {
            var peers = allocators.Where(a => !FootprintAllocator.IsNative(a) && runs.ContainsKey((w, a)))
                                  .Select(a => (a, settled: Median(runs[(w, a)], g => g.Settled), trim: Median(runs[(w, a)], g => g.AfterTrim),
                                                peak: Median(runs[(w, a)], g => g.PeakRatio)))
                                  .ToList();
            (string a, double settled, double trim, double peak) best = peers.Count > 0 ? peers.MinBy(p => p.settled) : ("-", double.NaN, double.NaN, double.NaN);
            (string a, double settled, double trim, double peak) bestPeak = peers.Count > 0 ? peers.MinBy(p => p.peak) : ("-", double.NaN, double.NaN, double.NaN);
            double bestTrim = peers.Count > 0 ? peers.Select(p => p.trim).Where(t => !double.IsNaN(t)).DefaultIfEmpty(double.NaN).Min() : double.NaN;
            string bestTrimName = peers.Where(p => p.trim == bestTrim).Select(p => p.a).FirstOrDefault() ?? "-";
            List<FootprintFile>? ex = runs.GetValueOrDefault((w, Ex)), bg = runs.GetValueOrDefault((w, Bg)), gl = runs.GetValueOrDefault((w, Peers.Glibc));
            double noCall = ex != null ? Median(ex, g => g.NoCall) : double.NaN;
            double afterExplicit = ex != null ? Median(ex, g => g.AfterCall) : double.NaN;
            double spike = ex != null ? Median(ex, g => g.CallSpikeMib) : double.NaN;
            double bgEnd = bg != null ? Median(bg, g => g.Settled) : double.NaN;
            double bgPeak = bg != null ? Median(bg, g => g.PeakRatio) : double.NaN;
            double glPeak = gl != null ? Median(gl, g => g.PeakRatio) : double.NaN;
            double live = runs.Where(kv => kv.Key.W == w).Select(kv => Median(kv.Value, g => g.LiveMib)).DefaultIfEmpty(double.NaN).First();
            summary.Add(w, Fmt.F(live), R(glPeak), $"{R(bestPeak.peak)} ({bestPeak.a})", R(bgPeak),
                        Met(bgPeak <= glPeak, bgPeak, glPeak, $"{R(bgPeak)} vs {R(glPeak)}"),
                        $"{R(best.settled)} ({best.a})", $"{R(bestTrim)} ({bestTrimName})", R(noCall), R(afterExplicit), R(bgEnd),
                        Met(bgEnd <= 1.10 * afterExplicit, bgEnd, afterExplicit, $"{R(bgEnd)} vs {R(1.10 * afterExplicit)}"),
                        Met(noCall <= best.settled, noCall, best.settled, $"{R(noCall)} vs {R(best.settled)}"),
                        Met(spike <= 2, spike, 0, $"+{Fmt.F(spike)} MiB"));
        }
        sb.Append(summary);
        sb.AppendLine();
        sb.AppendLine("Goals: without a limit, NativeHeap's peak RSS / peak live during the workload is no worse than glibc's in the same run; " +
                      "NativeHeap's background compactor by itself ends the window within 10% of what `Compact()` + " +
                      "`ReleaseFreeMemory()` reach; before any compaction (no call) NativeHeap's RSS/live is at most the best peer's settled " +
                      "figure; an explicit compaction never raises RSS above its start plus about one 2 MiB pageblock. \"Peer\" includes the .NET GC rows.");
        sb.AppendLine();

        if (allocators.Contains(Lim))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"### The limit row: `HeapOptions.MemoryLimit` = {factor} x the workload's peak live bytes");
            sb.AppendLine();
            if (skipped.TryGetValue(Lim, out string? limWhy))
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"**skipped**: {limWhy}. No figure is reported for it.");
            }
            else
            {
                var lt = new MarkdownTable("<Workload", "MemoryLimit MiB", "Failed allocations", "Peak RSS / limit", "Peak RSS / peak live",
                                           "Workload k ops/s, limit", "without limit (native-background)", "<Limit / without (goal >= 0.70)",
                                           "<0 failed and peak RSS <= limit");
                foreach (string w in workloads)
                {
                    if (!runs.TryGetValue((w, Lim), out List<FootprintFile>? lr)) continue;
                    List<FootprintFile>? bg = runs.GetValueOrDefault((w, Bg));
                    double failed = lr.Sum(r => r.Number("failedAllocations"));
                    double overLimit = lr.Select(r => Figures.Of(r).PeakOverLimit).DefaultIfEmpty(double.NaN).Max();
                    double ops = Median(lr, g => g.OpsPerSec), opsBg = bg != null ? Median(bg, g => g.OpsPerSec) : double.NaN;
                    lt.Add(w, Fmt.F(MedianNumber(lr, "memoryLimit") / (1 << 20)), Fmt.N((long)failed), MedRange(lr, g => g.PeakOverLimit),
                           MedRange(lr, g => g.PeakRatio), MedRange(lr, g => g.OpsPerSec / 1e3, 0),
                           bg != null ? MedRange(bg, g => g.OpsPerSec / 1e3, 0) : "-",
                           Met(ops / opsBg >= 0.70, ops, opsBg, R(ops / opsBg)),
                           Met(failed == 0 && overLimit <= 1, failed, overLimit, $"{Fmt.N((long)failed)} failed, worst peak {R(overLimit)} x limit"));
                }
                sb.Append(lt);
                sb.AppendLine();
                sb.AppendLine("Peak RSS counts everything the heap made resident above the baseline, its metadata (handle table, page descriptors) " +
                              "included, while `MemoryLimit` bounds committed arena memory: the metadata is in the NativeHeap table of each workload.");
            }
            sb.AppendLine();
        }

        foreach (string f in failures) sb.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"**FAILED**: {f}");
        foreach ((string a, string why) in skipped.Where(kv => kv.Key != Lim)) sb.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"**{a} skipped**: {why}");

        foreach (string w in workloads)
        {
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {w}");
            sb.AppendLine();
            var wl = new FootprintWorkload(w, scale, seed);
            int windowS = FootprintWorkload.WindowMs(w, quick) / 1000;
            sb.AppendLine($"`--only {w}`. {wl.Description}. Peak live from the parameters: {Fmt.Mib(wl.PeakLiveBytes)}. NativeHeap's arena: {Fmt.Mib(wl.ArenaBytes)} (twice the peak, rounded up to a power of two" +
                          (w == FootprintWorkload.Mesh ? "; the peak here is both fills together, what a heap holds before anything moves" : "") + ")" +
                          (allocators.Contains(Lim) ? $"; the limit row's MemoryLimit: {factor} x {Fmt.Mib(wl.PeakLiveBytes)} = {Fmt.Mib((long)(limitFactor * wl.PeakLiveBytes))}" : "") + ".");
            sb.AppendLine();
            var t = new MarkdownTable("<Allocator", "Live MiB", "Peak live MiB", "Peak RSS MiB", "Peak RSS / peak live", "Peak at s", "<Peak in phase",
                                      "Right after last step", "After Compact+Release", "Compact+Release ms", "Call spike MiB", "1 s", "5 s",
                                      $"Settled ({windowS} s)", $"<Below {TargetRatio.ToString("F1", Inv)} after", "Spike after last step MiB",
                                      "<After own trim", "Failed allocations", "Corrupt");
            foreach (string a in allocators)
            {
                if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs))
                {
                    if (skipped.ContainsKey(a)) t.Add([a, "skipped", .. Enumerable.Repeat("-", 17)]);
                    continue;
                }
                bool ex = a == Ex, bg = FootprintAllocator.IsNative(a) && !ex;
                double below = Median(rs, g => g.BelowTargetS);
                string trimName = rs[0].Get("trimName") ?? "-";
                double trim = Median(rs, g => g.AfterTrim);
                string phase = rs.Select(r => Figures.Of(r).PeakPhase).GroupBy(p => p).OrderByDescending(g => g.Count()).First().Key;
                t.Add(a, Fmt.F(Median(rs, g => g.LiveMib)), Fmt.F(Median(rs, g => g.PeakLiveMib)), Fmt.F(Median(rs, g => g.PeakRssMib)),
                      MedRange(rs, g => g.PeakRatio), Fmt.F(Median(rs, g => g.PeakTimeS), 2), phase,
                      MedRange(rs, g => g.NoCall),
                      ex ? R(Median(rs, g => g.AfterCall)) : "-", ex ? Fmt.F(Median(rs, g => g.CallMs)) : "-",
                      ex ? "+" + Fmt.F(Median(rs, g => g.CallSpikeMib)) : "-",
                      R(Median(rs, g => g.At1s)), R(Median(rs, g => g.At5s)), MedRange(rs, g => g.Settled),
                      double.IsPositiveInfinity(below) ? "not reached" : double.IsNaN(below) ? "n/a" : Fmt.F(below, 2) + " s",
                      bg || ex ? "+" + Fmt.F(Median(rs, g => g.SpikeAfterMib)) : "-",
                      trimName == "-" || double.IsNaN(trim) ? "-" : $"{R(trim)} ({trimName})",
                      rs[0].Number("mayFail") == 1 ? Fmt.N(rs.Sum(r => (long)r.Number("failedAllocations"))) : "-",
                      Fmt.N(rs.Sum(r => (long)r.Number("corrupt"))));
            }
            sb.Append(t);
            sb.AppendLine();

            // The kernel's peak per phase, and the operations per second per phase.
            string[] phases = runs.Where(kv => kv.Key.W == w).SelectMany(kv => kv.Value).SelectMany(f => f.Ops.Select(o => o.Phase)).Distinct().ToArray();
            if (phases.Length > 0)
            {
                var pk = new MarkdownTable(["<Peak RSS MiB (VmHWM) / peak live so far, by phase", .. phases, "After the last step"]);
                var ops = new MarkdownTable(["<k operations/s (allocations written + frees)", .. phases, "Whole workload", "<vs native-background"]);
                double bgOps = runs.TryGetValue((w, Bg), out List<FootprintFile>? bgr) ? Median(bgr, g => g.OpsPerSec) : double.NaN;
                foreach (string a in allocators)
                {
                    if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs)) continue;
                    var cells = new List<string> { a };
                    foreach (string p in phases)
                    {
                        double peak = MedianOf(rs, f => f.Phases.Where(x => x.Name == p).Select(x => (double)x.PeakBytes).FirstOrDefault(-1));
                        double liveSoFar = MedianOf(rs, f => f.Ops.Where(x => x.Phase == p).Select(x => (double)x.PeakLiveSoFar).FirstOrDefault(-1));
                        cells.Add(double.IsNaN(peak) ? "n/a" : $"{Fmt.F(peak / (1 << 20))} ({R(peak / liveSoFar)})");
                    }
                    double after = MedianOf(rs, f => f.Number("rssPeakAfterWorkload"));
                    cells.Add(double.IsNaN(after) ? "n/a" : Fmt.F(after / (1 << 20)));
                    pk.Add([.. cells]);
                    double o = Median(rs, g => g.OpsPerSec);
                    ops.Add([a, .. phases.Select(p => PhaseRate(rs, p)), MedRange(rs, g => g.OpsPerSec / 1e3, 0),
                             FootprintAllocator.IsNative(a) && a != Bg && !double.IsNaN(bgOps) ? R(o / bgOps) : "-"]);
                }
                sb.Append(pk);
                sb.AppendLine();
                sb.Append(ops);
                sb.AppendLine();
            }

            var h = new MarkdownTable("<NativeHeap at the end", "Committed MiB at the last step", "Committed MiB", "Live MiB (heap)", "Metadata MiB", "Purged MiB (total)",
                                      "Decommitted MiB (total)", "Blocks migrated", "MiB migrated", "Waste wakes", "Waste MiB moved", "Daemon wakes");
            foreach (string a in allocators.Where(FootprintAllocator.IsNative))
            {
                if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs)) continue;
                string Mib(string key) => Fmt.F(MedianNumber(rs, key) / (1 << 20));
                string N(string key) => double.IsNaN(MedianNumber(rs, key)) ? "n/a" : Fmt.N((long)MedianNumber(rs, key));
                h.Add(a, Mib("heapCommittedNoCall"), Mib("heapCommitted"), Mib("heapLive"), Mib("heapMetadata"), Mib("heapPurged"), Mib("heapDecommitted"),
                      N("heapBlocksMigrated"), Mib("heapBytesMigrated"), N("wasteWakes"), Mib("wasteBytesMoved"), N("daemonWakes"));
            }
            sb.Append(h);
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"![RSS/live over time, {w}]({svgPrefix}{w}.svg)");
            sb.AppendLine();
            sb.AppendLine($"[{svgPrefix}{w}.svg]({svgPrefix}{w}.svg): RSS/live over time, first repetition of each allocator; dashed lines are " +
                          "native-explicit's phase boundaries (each allocator runs the same phases at its own pace).");
        }

        sb.AppendLine();
        sb.AppendLine("## Columns");
        sb.AppendLine();
        sb.AppendLine("- *Peak RSS / peak live*: the highest RSS during the workload (the kernel's VmHWM over the workload's phases, or the highest " +
                      $"{RssRecorder.IntervalMs} ms sample if higher) over the most bytes live at once, counted by the workload itself (the same for every allocator, " +
                      "since each sees the same seeded sequence; a limited heap that refused blocks has fewer). *Peak at s*: seconds from the workload's first step to the " +
                      "highest sample; *peak in phase*: the phase whose VmHWM was highest (the most frequent over the repetitions).");
        sb.AppendLine("- The other ratios are RSS over the live bytes at the workload's end. *Right after last step*: no call yet. *After Compact+Release*: native-explicit, right after `Compact()` + " +
                      "`ReleaseFreeMemory()`; *Compact+Release ms* is that call's time; *call spike*: the peak RSS during the call minus the RSS when it started.");
        sb.AppendLine("- *1 s*, *5 s*, *settled*: RSS/live that long after the last step (settled: end of the idle window; for native-explicit the " +
                      $"window starts after the call). *Below {TargetRatio.ToString("F1", Inv)} after*: the time from the last step until RSS/live first fell below it (0 when it already was). " +
                      "*Spike after last step*: the peak RSS from the last step to the end of the window minus the RSS at the last step.");
        sb.AppendLine("- *After own trim*: the allocator's call at the end of the window: glibc malloc_trim(0), mimalloc mi_collect(true), tcmalloc " +
                      "MallocExtension_ReleaseFreeMemory(), jemalloc mallctl(\"arena.4096.purge\") (4096 = MALLCTL_ARENAS_ALL), the .NET GC an aggressive compacting " +
                      "`GC.Collect` (large object heap compacted too). Peers otherwise run with their defaults (jemalloc's 10 s dirty decay among them, which is why it can fall during the window).");
        sb.AppendLine("- *Peak RSS MiB (VmHWM) by phase*: the kernel's peak RSS during each phase (read and reset at the phase's end), over the most bytes live " +
                      "from the workload's start to that phase's end. *After the last step*: the peak from the last step to the end of the window.");
        sb.AppendLine("- *k operations/s*: allocations (each block written in full, through a `PinScope` for NativeHeap) plus frees, per second of the phase's " +
                      "wall-clock time, with the sampler and (for NativeHeap) the background compactor running beside it on this 2-core machine. " +
                      "*vs native-background*: the row's whole-workload rate over native-background's (the limit row's goal is >= 0.70).");
        sb.AppendLine("- Rows: glibc, mimalloc, jemalloc, tcmalloc (malloc/free); gc-workstation and gc-server: `byte[]` values on the .NET GC (workstation " +
                      "concurrent GC, and server GC through DOTNET_gcServer=1 in the child's environment), a block being a slot of a table of arrays; " +
                      "native-explicit: NativeHeap without a background thread, `Compact()` + `ReleaseFreeMemory()` after the last step; native-background: " +
                      "NativeHeap with `StartBackgroundCompaction()` right after it is created and nothing else (what a service gets by itself); " +
                      $"native-limit: native-background with `HeapOptions.MemoryLimit` = {factor} x the workload's peak live bytes (from its parameters, " +
                      "before the run), allocating with `TryAllocate` so that a refusal is counted (*failed allocations*) and the block left out.");
        return sb.ToString();

        static string Met(bool ok, double a, double b, string detail) =>
            double.IsNaN(a) || double.IsNaN(b) ? "-" : (ok ? "yes" : "**no**") + $" ({detail})";
    }

    /// <summary>The median over the repetitions of a figure of the file, NaN or negative values left out.</summary>
    private static double MedianOf(List<FootprintFile> runs, Func<FootprintFile, double> figure) =>
        Stats.Median(runs.Select(figure).Where(v => !double.IsNaN(v) && v >= 0));

    /// <summary>Whether resetting VmHWM worked in the children: after the reset, VmHWM should equal the RSS of that moment.</summary>
    private static void AppendHwmCheck(StringBuilder sb, Dictionary<(string W, string A), List<FootprintFile>> runs)
    {
        var files = runs.Values.SelectMany(r => r).Where(f => !double.IsNaN(f.Number("hwmAfterReset"))).ToList();
        if (files.Count == 0) return;
        int ok = files.Count(f => f.Get("peakCounter") == "VmHWM" && f.Number("hwmAfterReset") <= f.Number("rssAtReset") + (1 << 20));
        double before = Stats.Median(files.Select(f => (f.Number("hwmBeforeReset") - f.Number("rssAtReset")) / (1 << 20)));
        double afterMax = files.Max(f => (f.Number("hwmAfterReset") - f.Number("rssAtReset")) / (1 << 20));
        sb.AppendLine($"VmHWM reset check: in {ok} of {files.Count} children writing 5 to /proc/self/clear_refs brought VmHWM down to the RSS of that moment " +
                      $"(within 1 MiB; at most {Fmt.F(afterMax, 2)} MiB above it), from a median {Fmt.F(before)} MiB above it before the reset." +
                      (ok < files.Count ? " **Where it did not, the peaks come from the samples only.**" : ""));
        sb.AppendLine();
    }

    /// <summary>RSS/live over time (seconds since the baseline) of each allocator's first repetition, with
    /// native-explicit's phase boundaries. Samples with less than 2% of the run's peak live bytes are left out: there the
    /// ratio means nothing; at most about 1500 points per allocator (every k-th sample, and the highest).</summary>
    private static string Plot(string w, Dictionary<(string W, string A), List<FootprintFile>> runs)
    {
        var plot = new SvgPlot($"{w}: RSS / live over time (first repetition)", "seconds since the baseline", "RSS / live bytes");
        double yMax = 1;
        foreach (string a in FootprintAllocator.Names)
        {
            if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs) || rs.Count == 0) continue;
            FootprintFile f = rs[0];
            long peakLive = f.Samples.Select(s => s.Live).DefaultIfEmpty(0).Max();
            var kept = f.Samples.Where(s => s.Live > peakLive / 50).ToList();
            int step = Math.Max(1, kept.Count / 1500);
            int top = kept.Count == 0 ? -1 : kept.IndexOf(kept.MaxBy(s => (double)s.Rss / s.Live));
            var points = kept.Where((s, i) => i % step == 0 || i == top).Select(s => (s.Ms / 1000, (double)s.Rss / s.Live)).ToList();
            plot.AddSeries(a, points);
            double end = f.Number("workloadEndMs");
            yMax = Math.Max(yMax, f.Samples.Where(s => s.Ms >= end && s.Live > 0).Select(s => (double)s.Rss / s.Live).DefaultIfEmpty(1).Max());
        }
        plot.YMax = Math.Min(yMax * 1.1, 12);
        plot.AddReference(1, "1.0");
        plot.AddReference(TargetRatio, TargetRatio.ToString("F1", Inv));
        if (runs.TryGetValue((w, FootprintAllocator.NativeExplicit), out List<FootprintFile>? ex) && ex.Count > 0)
            foreach ((string name, double ms, _) in ex[0].Phases)
                plot.AddMarker(ms / 1000, name);
        return plot.Render();
    }
}
