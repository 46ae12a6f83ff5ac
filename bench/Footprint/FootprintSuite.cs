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
/// <c>--quick</c>) with one SVG plot per workload.
/// </summary>
public static class FootprintSuite
{
    private const string Usage = "usage: footprint [--quick] [--seed N] [--reps N] [--only mesh,redis,burst] [--out FILE]";
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>RSS/live the background row is timed to reach.</summary>
    private const double TargetRatio = 1.3;

    public static int Run(string[] args)
    {
        bool quick = false;
        int seed = Random.Shared.Next(), reps = -1;
        string? outPath = null;
        var only = new List<string>();
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
        if (reps < 0) reps = quick ? 1 : 3;
        int scale = quick ? 8 : 1, windowMs = quick ? 3_000 : 15_000;
        string[] workloads = only.Count > 0 ? [.. FootprintWorkload.Names.Where(only.Contains)] : FootprintWorkload.Names;

        string command = "dotnet run -c Release --project bench -- footprint" + (args.Length > 0 ? " " + string.Join(' ', args) : "");
        string repeat = "dotnet run -c Release --project bench -- footprint" + (quick ? " --quick" : "") + $" --seed {seed} --reps {reps}" +
                        (only.Count > 0 ? $" --only {string.Join(',', workloads)}" : "");
        Console.WriteLine($"footprint: seed {seed}, {reps} rep(s), window {windowMs / 1000} s (repeat with: {repeat}){(quick ? "; QUICK run" : "")}");

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
                    foreach (string a in FootprintAllocator.Names)
                    {
                        if (skipped.ContainsKey(a)) continue;
                        string file = Path.Combine(dir, $"{w}-{a}-{rep}.csv");
                        var sw = Stopwatch.StartNew();
                        int rc = StartChild(w, a, seed + rep, scale, windowMs, file);
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
                        Console.WriteLine(string.Create(Inv, $"  {w,-5} {a,-17} rep {rep}: live {g.LiveMib:F1} MiB, peak RSS {g.PeakRssMib:F1} MiB, " +
                                          $"no call {g.NoCall:F2}, settled {g.Settled:F2}") +
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
        string svgPrefix = quick ? "footprint-quick-" : "footprint-";
        foreach (string w in workloads)
            File.WriteAllText(Path.Combine(mdDir, $"{svgPrefix}{w}.svg"), Plot(w, runs));
        string markdown = Render(quick, reps, seed, scale, windowMs, command, repeat, workloads, runs, skipped, failures, total.Elapsed,
                                 loadBefore, RunInfo.LoadAverage(), svgPrefix);
        File.WriteAllText(md, markdown);
        Console.WriteLine();
        Console.WriteLine(markdown);
        Console.WriteLine($"footprint: wrote {md} and {workloads.Length} SVG plot(s) in {total.Elapsed.TotalSeconds:F1} s (seed {seed})");
        foreach (string f in failures) Console.Error.WriteLine($"footprint: FAILED {f}");
        return failures.Count == 0 ? 0 : 1;
    }

    /// <summary>Starts this program again as <c>footprint-child</c> (the apphost, or <c>dotnet</c> with the assembly),
    /// with jemalloc's tunable in the environment of the jemalloc child, and waits for it (at most 15 minutes).</summary>
    private static int StartChild(string workload, string allocator, int seed, int scale, int windowMs, string outFile)
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
        if (allocator == Peers.Jemalloc) psi.Environment[Peers.TunablesVariable] = Peers.TunablesWithJemalloc();
        using Process child = Process.Start(psi)!;
        if (!child.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            child.Kill(entireProcessTree: true);
            child.WaitForExit();
            return -1;
        }
        return child.ExitCode;
    }

    /// <summary>One run's figures (ratios are RSS over the workload's live bytes at its end).</summary>
    private sealed record Figures(double LiveMib, double PeakRssMib, double PeakRatio, double NoCall, double AfterCall, double CallMs,
                                  double CallSpikeMib, double At1s, double At5s, double Settled, double BelowTargetS, double SpikeAfterMib,
                                  double AfterTrim)
    {
        public static Figures Of(FootprintFile f)
        {
            double live = f.Number("liveBytes"), end = f.Number("workloadEndMs"), windowEnd = f.Number("windowEndMs");
            const double mib = 1 << 20;
            double peakLive = Math.Max(live, f.Samples.Where(s => s.Ms <= end).Select(s => (double)s.Live).DefaultIfEmpty(0).Max());
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
            // VmHWM follows the kernel's per-thread RSS counters, which lag by up to 64 faults: never below a reading.
            double peakRss = Math.Max(f.Number("rssPeakWorkload"), Math.Max(f.Number("rssNoCall"),
                                      f.Samples.Where(s => s.Ms <= end).Select(s => (double)s.Rss).DefaultIfEmpty(0).Max()));
            double peakAfter = Math.Max(f.Number("rssPeakAfterWorkload"),
                                        f.Samples.Where(s => s.Ms >= end && s.Ms <= windowEnd).Select(s => (double)s.Rss).DefaultIfEmpty(0).Max());
            return new Figures(
                live / mib,
                peakRss / mib,
                peakRss / peakLive,
                f.Number("rssNoCall") / live,
                f.Number("rssAfterCall") / live,
                f.Number("callMs"),
                (f.Number("rssCallPeak") - f.Number("rssCallStart")) / mib,
                At(1000),
                At(5000),
                f.Number("rssSettled") / live,
                below,
                (peakAfter - f.Number("rssNoCall")) / mib,
                f.Number("rssAfterTrim") / live);
        }
    }

    /// <summary>The median of a figure over the repetitions, NaN values (figures not taken) left out.</summary>
    private static double Median(List<FootprintFile> runs, Func<Figures, double> figure) =>
        Stats.Median(runs.Select(r => figure(Figures.Of(r))).Where(v => !double.IsNaN(v)));

    private static double MedianNumber(List<FootprintFile> runs, string key) =>
        Stats.Median(runs.Select(r => r.Number(key)).Where(v => !double.IsNaN(v)));

    private static string R(double v) => Fmt.F(v, 2);

    private static string Render(bool quick, int reps, int seed, int scale, int windowMs, string command, string repeat, string[] workloads,
                                 Dictionary<(string W, string A), List<FootprintFile>> runs, Dictionary<string, string> skipped,
                                 List<string> failures, TimeSpan elapsed, string? loadBefore, string? loadAfter, string svgPrefix)
    {
        var sb = new StringBuilder();
        sb.AppendLine(quick
            ? "# Resident memory over time (QUICK run: 1/8 of the bytes, 3 s idle windows; a smoke test, not the figures)"
            : "# Resident memory over time: three service workloads");
        sb.AppendLine();
        RunInfo.AppendProvenance(sb, command, elapsed, seed, repeat, loadBefore, loadAfter);
        sb.AppendLine($"Every allocator runs every workload in a child process of its own ({reps} repetition(s), seeds {seed}..{seed + reps - 1}; " +
                      "medians), since allocators in one process would share pages. The child prepares its block list, a sample array and a " +
                      "sampler thread, runs the workload once at 1/256 of its size (JIT; NativeHeap on a heap of its own), then takes its baseline RSS " +
                      "(after GC.Collect and malloc_trim) and runs the workload; a thread reads /proc/self/statm every 20 ms. RSS is the growth " +
                      "over that baseline, so the runtime's own memory is left out and the allocator's metadata counts; live = bytes requested " +
                      $"by the surviving blocks (size-class rounding counts against every allocator). After the workload's last step the child " +
                      $"stays idle for {windowMs / 1000} s (the window) and is then *settled*; peers then make their own trim call. " +
                      "Peak figures come from the kernel's VmHWM (reset through /proc/self/clear_refs), so no spike escapes between samples. " +
                      "Every surviving block's bytes are verified at the end." + (scale > 1 ? $" Bytes and block counts are 1/{scale} of the full run's." : ""));
        sb.AppendLine();

        sb.AppendLine("## Summary");
        sb.AppendLine();
        var summary = new MarkdownTable("<Workload", "Live MiB", "<Best peer RSS/live settled", "Best peer after its trim", "NativeHeap no call",
                                        "NativeHeap after explicit", "NativeHeap background, end of window", "<Background within 10% of explicit",
                                        "<No call <= best peer settled", "<Explicit spike <= start + 2 MiB");
        foreach (string w in workloads)
        {
            var peers = FootprintAllocator.Names.Where(a => !FootprintAllocator.IsNative(a) && runs.ContainsKey((w, a)))
                                                .Select(a => (a, settled: Median(runs[(w, a)], g => g.Settled), trim: Median(runs[(w, a)], g => g.AfterTrim)))
                                                .ToList();
            (string a, double settled, double trim) best = peers.Count > 0 ? peers.MinBy(p => p.settled) : ("-", double.NaN, double.NaN);
            double bestTrim = peers.Count > 0 ? peers.Select(p => p.trim).Where(t => !double.IsNaN(t)).DefaultIfEmpty(double.NaN).Min() : double.NaN;
            string bestTrimName = peers.Where(p => p.trim == bestTrim).Select(p => p.a).FirstOrDefault() ?? "-";
            List<FootprintFile>? ex = runs.GetValueOrDefault((w, "native-explicit")), bg = runs.GetValueOrDefault((w, "native-background"));
            double noCall = ex != null ? Median(ex, g => g.NoCall) : double.NaN;
            double afterExplicit = ex != null ? Median(ex, g => g.AfterCall) : double.NaN;
            double spike = ex != null ? Median(ex, g => g.CallSpikeMib) : double.NaN;
            double bgEnd = bg != null ? Median(bg, g => g.Settled) : double.NaN;
            double live = ex != null ? Median(ex, g => g.LiveMib) : peers.Count > 0 ? Median(runs[(w, peers[0].a)], g => g.LiveMib) : double.NaN;
            summary.Add(w, Fmt.F(live), $"{R(best.settled)} ({best.a})", $"{R(bestTrim)} ({bestTrimName})", R(noCall), R(afterExplicit), R(bgEnd),
                        Met(bgEnd <= 1.10 * afterExplicit, bgEnd, afterExplicit, $"{R(bgEnd)} vs {R(1.10 * afterExplicit)}"),
                        Met(noCall <= best.settled, noCall, best.settled, $"{R(noCall)} vs {R(best.settled)}"),
                        Met(spike <= 2, spike, 0, $"+{Fmt.F(spike)} MiB"));
        }
        sb.Append(summary);
        sb.AppendLine();
        sb.AppendLine("Goals (the issue): NativeHeap's background compactor by itself ends the window within 10% of what `Compact()` + " +
                      "`ReleaseFreeMemory()` reach; before any compaction (no call) NativeHeap's RSS/live is at most the best peer's settled " +
                      "figure; an explicit compaction never raises RSS above its start plus about one 2 MiB pageblock.");
        foreach (string f in failures) sb.AppendLine().AppendLine($"**FAILED**: {f}");
        foreach ((string a, string why) in skipped) sb.AppendLine().AppendLine($"**{a} skipped**: {why}");

        foreach (string w in workloads)
        {
            sb.AppendLine();
            sb.AppendLine($"## {w}");
            sb.AppendLine();
            var wl = new FootprintWorkload(w, scale, seed);
            sb.AppendLine($"`--only {w}`. {wl.Description}. NativeHeap's arena: {Fmt.Mib(wl.ArenaBytes)} (twice the peak, rounded up to a power of two" +
                          (w == FootprintWorkload.Mesh ? "; the peak here is both fills together, what a heap holds before anything moves" : "") + ").");
            sb.AppendLine();
            var t = new MarkdownTable("<Allocator", "Live MiB", "Peak RSS MiB", "Peak RSS / peak live", "No call", "After Compact+Release",
                                      "Compact+Release ms", "Call spike MiB", "1 s", "5 s", "Settled (end of window)", $"<Below {TargetRatio.ToString("F1", Inv)} after",
                                      "Spike after last step MiB", "<After own trim", "Corrupt");
            foreach (string a in FootprintAllocator.Names)
            {
                if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs)) continue;
                bool ex = a == "native-explicit", bg = a == "native-background";
                double below = Median(rs, g => g.BelowTargetS);
                string trimName = rs[0].Get("trimName") ?? "-";
                double trim = Median(rs, g => g.AfterTrim);
                t.Add(a, Fmt.F(Median(rs, g => g.LiveMib)), Fmt.F(Median(rs, g => g.PeakRssMib)), R(Median(rs, g => g.PeakRatio)),
                      R(Median(rs, g => g.NoCall)),
                      ex ? R(Median(rs, g => g.AfterCall)) : "-", ex ? Fmt.F(Median(rs, g => g.CallMs)) : "-",
                      ex ? "+" + Fmt.F(Median(rs, g => g.CallSpikeMib)) : "-",
                      R(Median(rs, g => g.At1s)), R(Median(rs, g => g.At5s)), R(Median(rs, g => g.Settled)),
                      double.IsPositiveInfinity(below) ? "not reached" : double.IsNaN(below) ? "n/a" : Fmt.F(below, 2) + " s",
                      bg || ex ? "+" + Fmt.F(Median(rs, g => g.SpikeAfterMib)) : "-",
                      trimName == "-" || double.IsNaN(trim) ? "-" : $"{R(trim)} ({trimName})",
                      Fmt.N(rs.Sum(r => (long)r.Number("corrupt"))));
            }
            sb.Append(t);
            sb.AppendLine();
            var h = new MarkdownTable("<NativeHeap at the end", "Committed MiB at the last step", "Committed MiB", "Live MiB (heap)", "Metadata MiB", "Purged MiB (total)",
                                      "Decommitted MiB (total)", "Blocks migrated", "MiB migrated", "Waste wakes", "Waste MiB moved", "Daemon wakes");
            foreach (string a in new[] { "native-explicit", "native-background" })
            {
                if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs)) continue;
                string Mib(string key) => Fmt.F(MedianNumber(rs, key) / (1 << 20));
                string N(string key) => double.IsNaN(MedianNumber(rs, key)) ? "n/a" : Fmt.N((long)MedianNumber(rs, key));
                h.Add(a, Mib("heapCommittedNoCall"), Mib("heapCommitted"), Mib("heapLive"), Mib("heapMetadata"), Mib("heapPurged"), Mib("heapDecommitted"),
                      N("heapBlocksMigrated"), Mib("heapBytesMigrated"), N("wasteWakes"), Mib("wasteBytesMoved"), N("daemonWakes"));
            }
            sb.Append(h);
            sb.AppendLine();
            sb.AppendLine($"![RSS/live over time, {w}]({svgPrefix}{w}.svg)");
            sb.AppendLine();
            sb.AppendLine($"[{svgPrefix}{w}.svg]({svgPrefix}{w}.svg): RSS/live over time, first repetition of each allocator; dashed lines are " +
                          "native-explicit's phase boundaries (each allocator runs the same phases at its own pace).");
        }

        sb.AppendLine();
        sb.AppendLine("## Columns");
        sb.AppendLine();
        sb.AppendLine("- Ratios are RSS over the live bytes at the workload's end, except *peak RSS / peak live* (the highest RSS during the workload over the most bytes live at once).");
        sb.AppendLine("- *No call*: right after the workload's last step. *After Compact+Release*: native-explicit, right after `Compact()` + " +
                      "`ReleaseFreeMemory()`; *Compact+Release ms* is that call's time; *call spike*: the peak RSS during the call minus the RSS when it started.");
        sb.AppendLine("- *1 s*, *5 s*, *settled*: RSS/live that long after the last step (settled: end of the idle window; for native-explicit the " +
                      $"window starts after the call). *Below {TargetRatio.ToString("F1", Inv)} after*: the time from the last step until RSS/live first fell below it (0 when it already was). " +
                      "*Spike after last step*: the peak RSS from the last step to the end of the window minus the RSS at the last step.");
        sb.AppendLine("- *After own trim*: the peer's call at the end of the window: glibc malloc_trim(0), mimalloc mi_collect(true), tcmalloc " +
                      "MallocExtension_ReleaseFreeMemory(), jemalloc mallctl(\"arena.4096.purge\") (4096 = MALLCTL_ARENAS_ALL). Peers otherwise run with their defaults " +
                      "(jemalloc's 10 s dirty decay among them, which is why it can fall during the window).");
        sb.AppendLine("- native-background calls `StartBackgroundCompaction()` right after creating the heap and nothing else; native-explicit has no background thread.");
        return sb.ToString();

        static string Met(bool ok, double a, double b, string detail) =>
            double.IsNaN(a) || double.IsNaN(b) ? "-" : (ok ? "yes" : "**no**") + $" ({detail})";
    }

    /// <summary>RSS/live over time (seconds since the baseline) of each allocator's first repetition, with
    /// native-explicit's phase boundaries. Samples with less than 2% of the run's peak live bytes are left out: there the
    /// ratio means nothing.</summary>
    private static string Plot(string w, Dictionary<(string W, string A), List<FootprintFile>> runs)
    {
        var plot = new SvgPlot($"{w}: RSS / live over time (first repetition)", "seconds since the baseline", "RSS / live bytes");
        double yMax = 1;
        foreach (string a in FootprintAllocator.Names)
        {
            if (!runs.TryGetValue((w, a), out List<FootprintFile>? rs) || rs.Count == 0) continue;
            FootprintFile f = rs[0];
            long peakLive = f.Samples.Select(s => s.Live).DefaultIfEmpty(0).Max();
            var points = f.Samples.Where(s => s.Live > peakLive / 50).Select(s => (s.Ms / 1000, (double)s.Rss / s.Live)).ToList();
            plot.AddSeries(a, points);
            double end = f.Number("workloadEndMs");
            yMax = Math.Max(yMax, f.Samples.Where(s => s.Ms >= end && s.Live > 0).Select(s => (double)s.Rss / s.Live).DefaultIfEmpty(1).Max());
        }
        plot.YMax = Math.Min(yMax * 1.1, 12);
        plot.AddReference(1, "1.0");
        plot.AddReference(TargetRatio, TargetRatio.ToString("F1", Inv));
        if (runs.TryGetValue((w, "native-explicit"), out List<FootprintFile>? ex) && ex.Count > 0)
            foreach ((string name, double ms) in ex[0].Phases)
                plot.AddMarker(ms / 1000, name);
        return plot.Render();
    }
}
