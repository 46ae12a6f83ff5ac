using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Compaction.Bench.Scenarios;

/// <summary>Settings of the <c>compaction</c> command.</summary>
public sealed class CompactionBenchOptions
{
    public const string Usage = "usage: compaction [--quick] [--seed N] [--only NAME[,NAME...]] [--repeat N] [--out FILE]   (names: " +
                                "high-order, throughput, proactive, latency, rss)";

    /// <summary>Smaller heaps, fewer repetitions, shorter windows: a CI smoke run of under a minute.</summary>
    public bool Quick { get; set; }
    /// <summary>Seed of every random choice; random (and printed) unless given.</summary>
    public int Seed { get; set; } = Random.Shared.Next();
    public bool SeedGiven { get; private set; }
    public string? OutPath { get; set; }
    public HashSet<string> Only { get; } = [];
    /// <summary>How many times the latency scenario runs its whole set of configurations (seeds Seed, Seed + 1, ...),
    /// each with its baselines, reporting the median of each figure over the runs; 1 unless given.</summary>
    public int Repeat { get; set; } = 1;

    public static bool TryParse(string[] args, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out CompactionBenchOptions? options, out string? error)
    {
        options = new CompactionBenchOptions();
        error = null;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string? value = i + 1 < args.Length ? args[i + 1] : null;
            switch (a)
            {
                case "--quick":
                    options.Quick = true;
                    break;
                case "--seed" when int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int seed):
                    options.Seed = seed;
                    options.SeedGiven = true;
                    i++;
                    break;
                case "--only" when value != null:
                    foreach (string name in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                        options.Only.Add(name);
                    i++;
                    break;
                case "--repeat" when int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int repeat) && repeat >= 1:
                    options.Repeat = repeat;
                    i++;
                    break;
                case "--out" when value != null:
                    options.OutPath = value;
                    i++;
                    break;
                default:
                    error = $"unknown option or missing value: {a}";
                    options = null;
                    return false;
            }
        }
        return true;
    }
}

/// <summary>
/// The <c>compaction</c> command: five scenarios, each run side by side with its baseline in this one process, and a
/// markdown report (bench/results/compaction.md, or compaction-quick.md for <c>--quick</c>).
/// </summary>
/// <remarks>Scenario code is plain Stopwatch timing over repeated runs (BenchmarkDotNet's model of one operation
/// repeated does not fit a heap that must be filled and fragmented before each measurement). Every run is seeded from
/// the one printed seed; heaps are reused across repetitions where the scenario allows, so that page faults (about
/// 13 us per 4 KiB page on these machines) are paid in the warm-up, not in the figures.</remarks>
public static class CompactionSuite
{
    private static readonly (string Name, Func<CompactionBenchOptions, ScenarioReport> Run)[] s_scenarios =
    [
        ("high-order", HighOrderScenario.Run),
        ("throughput", CompactionThroughputScenario.Run),
        ("proactive", ProactiveCompactionScenario.Run),
        ("latency", MutatorLatencyScenario.Run),
        ("rss", ResidentMemoryScenario.Run),
    ];

    public static int Run(string[] args)
    {
        if (!CompactionBenchOptions.TryParse(args, out CompactionBenchOptions? o, out string? error))
        {
            Console.Error.WriteLine($"compaction: {error}");
            Console.Error.WriteLine(CompactionBenchOptions.Usage);
            return 2;
        }
        string[] unknown = o.Only.Where(n => s_scenarios.All(s => s.Name != n)).ToArray();
        if (unknown.Length > 0)
        {
            Console.Error.WriteLine($"compaction: unknown scenario(s) {string.Join(", ", unknown)}");
            Console.Error.WriteLine(CompactionBenchOptions.Usage);
            return 2;
        }

        string command = "dotnet run -c Release --project bench -- compaction" + (args.Length > 0 ? " " + string.Join(' ', args) : "");
        string repeat = "dotnet run -c Release --project bench -- compaction" + (o.Quick ? " --quick" : "") + $" --seed {o.Seed}" +
                        (o.Only.Count > 0 ? $" --only {string.Join(',', o.Only)}" : "") + (o.Repeat > 1 ? $" --repeat {o.Repeat}" : "");
        Console.WriteLine($"compaction: seed {o.Seed} (repeat with: {repeat}){(o.Quick ? "; QUICK run" : "")}");

        string? loadBefore = RunInfo.LoadAverage();
        var total = Stopwatch.StartNew();
        var reports = new List<ScenarioReport>();
        var failures = new List<string>();
        foreach ((string name, Func<CompactionBenchOptions, ScenarioReport> run) in s_scenarios)
        {
            if (o.Only.Count > 0 && !o.Only.Contains(name)) continue;
            Console.WriteLine($"[{name}]");
            var sw = Stopwatch.StartNew();
            try
            {
                ScenarioReport report = run(o);
                report.Elapsed = sw.Elapsed;
                reports.Add(report);
                if (report.CorruptBlocks > 0) failures.Add($"{name}: {report.CorruptBlocks} corrupt block(s) after compaction");
            }
            catch (Exception e)
            {
                failures.Add($"{name}: {e.GetType().Name}: {e.Message}");
                Console.Error.WriteLine($"[{name}] FAILED: {e}");
            }
            Console.WriteLine($"[{name}] {sw.Elapsed.TotalSeconds:F1} s");
            GC.Collect();
        }
        total.Stop();

        string markdown = Render(o, command, repeat, reports, failures, total.Elapsed, loadBefore, RunInfo.LoadAverage());
        string outPath = o.OutPath ?? Path.Combine(Paths.BenchDirectory(), "results",
            o.Quick ? "compaction-quick.md" : o.Only.Count > 0 ? "compaction-partial.md" : "compaction.md");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
        File.WriteAllText(outPath, markdown);
        Console.WriteLine();
        Console.WriteLine(markdown);
        Console.WriteLine($"compaction: wrote {outPath} in {total.Elapsed.TotalSeconds:F1} s (seed {o.Seed})");
        foreach (string f in failures) Console.Error.WriteLine($"compaction: FAILED {f}");
        return failures.Count == 0 ? 0 : 1;
    }

    private static string Render(CompactionBenchOptions o, string command, string repeat, List<ScenarioReport> reports,
                                 List<string> failures, TimeSpan elapsed, string? loadBefore, string? loadAfter)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(o.Quick
            ? "# Compaction scenarios (QUICK run: small heaps, few repetitions; a smoke test, not the figures)"
            : "# Compaction scenarios");
        sb.AppendLine();
        RunInfo.AppendProvenance(sb, command, elapsed, o.Seed, repeat, loadBefore, loadAfter);
        sb.AppendLine("Each scenario runs its baseline and its compaction case in this one process, on heaps built from the same seed. " +
                      "Figures are medians over repeated runs unless a column says otherwise; latencies are Stopwatch ticks shown in µs.");
        sb.AppendLine();

        sb.AppendLine("## Summary");
        sb.AppendLine();
        var summary = new MarkdownTable("<Scenario", "<Metric", "Baseline", "With compaction", "Result", "<Goal", "<Met");
        foreach (ScenarioReport r in reports)
            foreach (SummaryRow row in r.Summary)
                summary.Add(row.Scenario, row.Metric, row.Baseline, row.WithCompaction, row.Result, row.Goal,
                            row.Met switch { true => "yes", false => "**no**", null => "-" });
        sb.Append(summary);
        foreach (string f in failures) sb.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"**FAILED**: {f}");

        foreach (ScenarioReport r in reports)
        {
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {r.Title}");
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"`--only {r.Name}`, {r.Elapsed.TotalSeconds:F1} s. {r.Setup}");
            foreach (MarkdownTable t in r.Tables)
            {
                sb.AppendLine();
                sb.Append(t);
            }
            if (r.Notes.Count > 0) sb.AppendLine();
            foreach (string n in r.Notes) sb.AppendLine(CultureInfo.InvariantCulture, $"- {n}");
        }
        return sb.ToString();
    }
}
