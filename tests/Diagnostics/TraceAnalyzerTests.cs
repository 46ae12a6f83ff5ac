using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Globalization;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Bench.Analysis;
using Compaction.TraceAnalyzer;
using Microsoft.Diagnostics.NETCore.Client;
using Microsoft.Diagnostics.Tracing;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The EventPipe path end to end: a child process (bench's events-child) allocates and compacts; this test attaches
/// an EventPipe session for the heap's provider, records it to a .nettrace file, runs the analyzer on the file and
/// checks its figures against the counters the child prints, exactly.
/// </summary>
public sealed class TraceAnalyzerTests(ITestOutputHelper output)
{
    [Fact]
    public async Task TheAnalyzerCountsWhatTheChildDid()
    {
        string bench = Path.Combine(AppContext.BaseDirectory, "Allocator.Bench.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add(bench);
        psi.ArgumentList.Add(EventsChild.Command);
        using Process child = Process.Start(psi)!;
        string trace = Path.Combine(Path.GetTempPath(), $"events-{child.Id}.nettrace");
        try
        {
            Assert.Equal("ready", child.StandardOutput.ReadLine());
            var client = new DiagnosticsClient(child.Id);
            using EventPipeSession session = client.StartEventPipeSession(
                [new EventPipeProvider(NativeHeapEventSource.SourceName, EventLevel.Verbose, -1)], requestRundown: false);
            var figures = new Dictionary<string, long>();
            await using (FileStream file = File.Create(trace))
            {
                Task copy = session.EventStream.CopyToAsync(file);
                child.StandardInput.WriteLine("go");
                for (string? line; (line = child.StandardOutput.ReadLine()) != "done";)
                {
                    Assert.NotNull(line);
                    string[] kv = line.Split('=');
                    figures[kv[0]] = long.Parse(kv[1], CultureInfo.InvariantCulture);
                }
                session.Stop();
                await copy.WaitAsync(TimeSpan.FromSeconds(30));
            }
            child.StandardInput.WriteLine("bye");

            CompactionTrace t;
            using (var source = new EventPipeEventSource(trace)) t = CompactionTrace.Read(source);
            output.WriteLine(t.Report());
            long heap = figures["heapId"];
            List<CompactionTrace.Pass> passes = t.Passes.Where(p => p.HeapId == heap && p.Trigger == "explicit").ToList();
            Assert.Equal(figures["explicitPasses"], passes.Count);
            Assert.Equal(figures["pagesMigrated"], passes.Sum(p => p.PagesMigrated));
            Assert.Equal(figures["bytesMoved"], passes.Sum(p => p.BytesMoved));
            Assert.Equal(figures["wakes"], t.Wakes.Count(w => w.HeapId == heap));
            List<CompactionTrace.Release> releases = t.Releases.Where(r => r.HeapId == heap).ToList();
            Assert.Equal(figures["decommitted"], releases.Sum(r => r.Decommitted));
            Assert.Equal(figures["purged"], releases.Sum(r => r.Purged));
            Assert.Equal(1, t.AllocationFailures);
            Assert.Contains("<svg", t.Svg());

            // The command (the nativeheap-trace tool) writes files only where --out says: none beside the trace
            // without it, the SVG into the folder with it.
            string outDir = Path.Combine(Path.GetTempPath(), $"analyzer-out-{child.Id}");
            string[] beside = Directory.GetFiles(Path.GetDirectoryName(trace)!, Path.GetFileNameWithoutExtension(trace) + "*");
            try
            {
                Assert.Equal(0, TraceAnalyzerCommand.Run([trace]));
                Assert.Equal(beside, Directory.GetFiles(Path.GetDirectoryName(trace)!, Path.GetFileNameWithoutExtension(trace) + "*"));
                Assert.Equal(0, TraceAnalyzerCommand.Run([trace, "--out", outDir]));
                Assert.Equal([Path.Combine(outDir, Path.GetFileNameWithoutExtension(trace) + ".svg")], Directory.GetFiles(outDir));
                Assert.Equal(2, TraceAnalyzerCommand.Run([trace, "--bogus"]));
            }
            finally
            {
                if (Directory.Exists(outDir)) Directory.Delete(outDir, recursive: true);
            }
        }
        finally
        {
            if (!child.WaitForExit(10_000)) child.Kill(entireProcessTree: true);
            File.Delete(trace);
        }
    }
}
