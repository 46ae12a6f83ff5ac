using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Globalization;
using System.Text;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Microsoft.Diagnostics.NETCore.Client;
using Microsoft.Diagnostics.Tracing;
using Compaction.Bench;

namespace Compaction.TraceAnalyzer;

/// <summary>What a trace of <see cref="NativeHeapEventSource"/> events says: every compaction pass, migration failure,
/// background wake and release, in the order they happened.</summary>
public sealed class CompactionTrace
{
    public sealed record Pass(double AtMs, long HeapId, string Trigger, string Mode, string Result, long PagesScanned, long PagesMigrated, long BytesMoved, double DurationMs);
    public sealed record Wake(double AtMs, long HeapId, string Trigger, long BytesMoved, double DurationMs, double WasteRatio);
    public sealed record Release(double AtMs, long HeapId, string Path, long Decommitted, long Purged);

    public List<Pass> Passes { get; } = [];
    public List<Wake> Wakes { get; } = [];
    public List<Release> Releases { get; } = [];
    public Dictionary<string, long> FailuresByReason { get; } = [];
    public long AllocationFailures { get; set; }
    public long LongTermPinMigrations { get; set; }

    /// <summary>Reads the provider's events from <paramref name="source"/> (a file or a live session) until it ends.</summary>
    public static CompactionTrace Read(EventPipeEventSource source)
    {
        var t = new CompactionTrace();
        source.Dynamic.All += e =>
        {
            if (e.ProviderName != NativeHeapEventSource.SourceName) return;
            double at = e.TimeStampRelativeMSec;
            long heap = e.PayloadByName("heapId") is long h ? h : 0;
            switch (e.EventName)
            {
                case "CompactionStop" or "Compaction/Stop":
                    t.Passes.Add(new Pass(at, heap, (string)e.PayloadByName("trigger"), (string)e.PayloadByName("mode"), (string)e.PayloadByName("result"), (long)e.PayloadByName("pagesScanned"),
                                          (long)e.PayloadByName("pagesMigrated"), (long)e.PayloadByName("bytesMoved"), (double)e.PayloadByName("durationMs")));
                    break;
                case "MigrationFailed":
                    string reason = (string)e.PayloadByName("reason");
                    t.FailuresByReason[reason] = t.FailuresByReason.GetValueOrDefault(reason) + (long)e.PayloadByName("count");
                    break;
                case "BackgroundWake":
                    t.Wakes.Add(new Wake(at, heap, (string)e.PayloadByName("trigger"), (long)e.PayloadByName("bytesMoved"), (double)e.PayloadByName("durationMs"),
                                         e.PayloadByName("wasteRatio") is double w ? w : double.NaN));
                    break;
                case "Released":
                    t.Releases.Add(new Release(at, heap, (string)e.PayloadByName("path"), (long)e.PayloadByName("bytesDecommitted"), (long)e.PayloadByName("bytesPurged")));
                    break;
                case "AllocationFailed":
                    t.AllocationFailures++;
                    break;
                case "LongTermPinMigration":
                    t.LongTermPinMigrations += (long)e.PayloadByName("blocks");
                    break;
            }
        };
        source.Process();
        return t;
    }

    /// <summary>The summary a person reads: passes by trigger with p50/p99/max pause and bytes moved per second,
    /// failures by reason, background wakes by trigger, memory given back; then the timeline of passes.</summary>
    public string Report()
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine("Compaction passes by trigger");
        sb.AppendLine(CultureInfo.InvariantCulture, $"  {"trigger",-10} {"passes",8} {"p50 ms",9} {"p99 ms",9} {"max ms",9} {"pages migrated",15} {"MiB moved",10} {"MB/s",9}");
        foreach (IGrouping<string, Pass> g in Passes.GroupBy(p => p.Trigger).OrderBy(g => g.Key))
        {
            double[] d = g.Select(p => p.DurationMs).Order().ToArray();
            long bytes = g.Sum(p => p.BytesMoved);
            double seconds = d.Sum() / 1000;
            sb.AppendLine(string.Create(inv, $"  {g.Key,-10} {g.Count(),8} {Percentile(d, 0.5),9:F3} {Percentile(d, 0.99),9:F3} {d[^1],9:F3} {g.Sum(p => p.PagesMigrated),15:N0} {bytes / 1048576.0,10:F1} {(seconds > 0 ? bytes / seconds / 1e6 : 0),9:F0}"));
        }
        sb.AppendLine("Migration failures by reason");
        foreach ((string reason, long n) in FailuresByReason.OrderByDescending(kv => kv.Value)) sb.AppendLine(string.Create(inv, $"  {reason,-20} {n,12:N0}"));
        if (FailuresByReason.Count == 0) sb.AppendLine("  none");
        sb.AppendLine("Background wakes by trigger");
        foreach (IGrouping<string, Wake> g in Wakes.GroupBy(w => w.Trigger).OrderBy(g => g.Key))
            sb.AppendLine(string.Create(inv, $"  {g.Key,-14} {g.Count(),8} wakes, {g.Sum(w => w.DurationMs),10:F1} ms, {g.Sum(w => w.BytesMoved) / 1048576.0,8:F1} MiB moved"));
        if (Wakes.Count == 0) sb.AppendLine("  none");
        if (Wakes.Count > 0)
        {
            sb.AppendLine("Waste (resident / live) after the background wakes, over time");
            int step = Math.Max(1, Wakes.Count / 10);
            for (int i = 0; i < Wakes.Count; i += step) sb.AppendLine(string.Create(inv, $"  {Wakes[i].AtMs,10:F1} ms  {Wakes[i].WasteRatio,6:F2}  ({Wakes[i].Trigger})"));
            sb.AppendLine(string.Create(inv, $"  {Wakes[^1].AtMs,10:F1} ms  {Wakes[^1].WasteRatio,6:F2}  ({Wakes[^1].Trigger}, the last wake)"));
        }
        sb.AppendLine(string.Create(inv, $"Given back to the OS: {Releases.Sum(r => r.Decommitted) / 1048576.0:F1} MiB decommitted, {Releases.Sum(r => r.Purged) / 1048576.0:F1} MiB purged, in {Releases.Count} releases"));
        sb.AppendLine(string.Create(inv, $"Allocation failures: {AllocationFailures}; blocks moved for long-term pins: {LongTermPinMigrations}"));
        sb.AppendLine("Timeline (ms since the trace began: trigger, pause, MiB moved)");
        foreach (Pass p in Passes.Take(50)) sb.AppendLine(string.Create(inv, $"  {p.AtMs,10:F1}  {p.Trigger,-9} {p.DurationMs,9:F3} ms {p.BytesMoved / 1048576.0,8:F2} MiB  {p.Result}"));
        if (Passes.Count > 50) sb.AppendLine(CultureInfo.InvariantCulture, $"  ... {Passes.Count - 50} more");
        return sb.ToString();
    }

    /// <summary>A picture: each pass's pause (ms) over the trace's time, one series per trigger.</summary>
    public string Svg()
    {
        var plot = new SvgPlot("Compaction passes: pause over time", "time since the trace began (s)", "pause (ms)");
        foreach (IGrouping<string, Pass> g in Passes.GroupBy(p => p.Trigger))
            plot.AddSeries(g.Key, g.Select(p => (p.AtMs / 1000, p.DurationMs)).ToList());
        foreach (Release r in Releases) plot.AddMarker(r.AtMs / 1000, $"release {r.Path}");
        return plot.Render();
    }

    private static double Percentile(double[] sorted, double q) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
}

/// <summary>
/// The command line of the tool (<c>nativeheap-trace</c>) and of bench's <c>analyze</c> command:
/// <c>FILE.nettrace [--out DIR]</c> reads a trace (dotnet-trace's, or one this command wrote);
/// <c>--pid N [--seconds S] [--out DIR]</c> attaches to a running process through EventPipe, records the heap's
/// provider for S seconds (10 by default) and analyzes it. Prints the report. Files are written only into the
/// directory <c>--out</c> names: the SVG of the passes (NAME.svg) and, with <c>--pid</c>, the recorded trace
/// (trace-PID.nettrace). Without <c>--out</c> nothing is written but a recording, to a temporary file deleted at the end.
/// </summary>
public static class TraceAnalyzerCommand
{
    /// <summary>The usage text; <paramref name="command"/> is how the caller is invoked.</summary>
    public static string Usage(string command) => $"""
        usage: {command} FILE.nettrace [--out DIR]
               {command} --pid N [--seconds S (10)] [--out DIR]
          Reads the events of a compacting native heap (EventSource {NativeHeapEventSource.SourceName}) from a trace
          (dotnet-trace collect --providers {NativeHeapEventSource.SourceName}) or a live process, and prints passes by
          trigger (p50/p99/max pause, MB/s moved), migration failures by reason, background wakes, memory given back
          and a timeline. With --out DIR it also writes DIR/NAME.svg (the pauses over time) and, with --pid, the
          recorded trace DIR/trace-PID.nettrace; without --out it writes no file.
        """;

    /// <summary>Runs the command; returns the process exit code (2 for a usage error).</summary>
    public static int Run(string[] args, string command = "nativeheap-trace")
    {
        string? file = null, outDir = null;
        int? pid = null;
        int seconds = 10;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--pid" when i + 1 < args.Length: pid = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seconds" when i + 1 < args.Length: seconds = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--out" when i + 1 < args.Length: outDir = args[++i]; break;
                case "-h" or "--help": Console.WriteLine(Usage(command)); return 0;
                default:
                    if (args[i].StartsWith('-') || file != null) { Console.Error.WriteLine($"{command}: unexpected argument '{args[i]}'"); Console.Error.WriteLine(Usage(command)); return 2; }
                    file = args[i];
                    break;
            }
        }
        if (outDir != null) Directory.CreateDirectory(outDir);
        string? temporary = null;
        try
        {
            if (pid is int p)
            {
                file = outDir != null ? Path.Combine(outDir, $"trace-{p}.nettrace") : temporary = Path.Combine(Path.GetTempPath(), $"nativeheap-trace-{Environment.ProcessId}-{p}.nettrace");
                Record(p, TimeSpan.FromSeconds(seconds), file);
            }
            if (file == null || !File.Exists(file))
            {
                Console.Error.WriteLine(file == null ? $"{command}: no trace given" : $"{command}: {file} not found");
                Console.Error.WriteLine(Usage(command));
                return 2;
            }
            CompactionTrace trace;
            using (var source = new EventPipeEventSource(file)) trace = CompactionTrace.Read(source);
            Console.Write(trace.Report());
            string picture = "";
            if (outDir != null)
            {
                string svg = Path.Combine(outDir, Path.GetFileNameWithoutExtension(file) + ".svg");
                File.WriteAllText(svg, trace.Svg());
                picture = $"; picture: {svg}" + (pid != null ? $"; trace: {file}" : "");
            }
            Console.WriteLine($"{command}: {trace.Passes.Count} passes{picture}");
            return 0;
        }
        finally
        {
            if (temporary != null) File.Delete(temporary);
        }
    }

    /// <summary>Records the provider's events of process <paramref name="pid"/> for <paramref name="length"/> into
    /// <paramref name="file"/> through an EventPipe session.</summary>
    public static void Record(int pid, TimeSpan length, string file)
    {
        var client = new DiagnosticsClient(pid);
        var providers = new[] { new EventPipeProvider(NativeHeapEventSource.SourceName, EventLevel.Verbose, -1) };
        using EventPipeSession session = client.StartEventPipeSession(providers, requestRundown: false);
        using FileStream output = File.Create(file);
        Task copy = session.EventStream.CopyToAsync(output);
        Thread.Sleep(length);
        session.Stop();
        copy.Wait();
    }
}
