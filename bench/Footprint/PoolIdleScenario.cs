using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Reflection;
using System.Text;
using Compaction.Allocator;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Compaction.Bench.Footprint;

/// <summary>
/// The <c>pool-idle</c> command: how fast a buffer pool gives memory back once a burst of rents is returned, each pool
/// in a process of its own (resident memory is per process). A burst rents 64 MiB of 4 KiB buffers (what a server's
/// connections hold under load), writes them and returns them all; then the process stays idle and its RSS is read
/// every second. Pools: the arena pool (long-term pins, the heap's background thread on: what
/// <see cref="ArenaMemoryPoolFactory"/> gives a server), Kestrel's own pool (.NET 10's PinnedBlockMemoryPool, from a
/// started Kestrel server's IMemoryPoolFactory, so its heartbeat-driven eviction runs) and MemoryPool&lt;byte&gt;.Shared
/// (ArrayPool arrays; not pinned).
/// </summary>
public static class PoolIdleScenario
{
    public const string ChildCommand = "pool-idle-child";
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly string[] s_pools = ["arena", "kestrel", "shared"];
    private const int Buffers = 16384, BufferSize = 4096;

    public static int Run(string[] args)
    {
        bool quick = args.Contains("--quick");
        int seconds = quick ? 12 : 60;
        string dir = Path.Combine(Path.GetTempPath(), $"pool-idle-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        string? loadBefore = RunInfo.LoadAverage();
        var total = Stopwatch.StartNew();
        var results = new Dictionary<string, List<(int t, long rss)>>();
        var peaks = new Dictionary<string, long>();
        foreach (string pool in s_pools)
        {
            string file = Path.Combine(dir, pool + ".txt");
            Console.WriteLine($"pool-idle: {pool} ({seconds} s idle)");
            int rc = StartChild(pool, seconds, file);
            if (rc != 0 || !File.Exists(file)) { Console.Error.WriteLine($"pool-idle: {pool} FAILED (exit {rc})"); return 1; }
            var samples = new List<(int, long)>();
            foreach (string line in File.ReadAllLines(file))
            {
                string[] p = line.Split(' ');
                if (p[0] == "peak") peaks[pool] = long.Parse(p[1], Inv);
                else samples.Add((int.Parse(p[0], Inv), long.Parse(p[1], Inv)));
            }
            results[pool] = samples;
        }
        int[] at = quick ? [0, 5, 10, 12] : [0, 10, 20, 30, 45, 60];
        var table = new Scenarios.MarkdownTable(["<Pool", "Peak MiB", .. at.Select(t => $"{t} s after the return MiB"), "Share given back by the end"]);
        foreach (string pool in s_pools)
        {
            List<(int t, long rss)> s = results[pool];
            long peak = peaks[pool];
            var cells = new List<string> { Name(pool), Scenarios.Fmt.F(peak / 1048576.0) };
            foreach (int t in at) cells.Add(Scenarios.Fmt.F(s.Where(x => x.t <= t).Select(x => x.rss).DefaultIfEmpty(0).Last() / 1048576.0));
            cells.Add(Scenarios.Fmt.Pct(100.0 * (peak - s[^1].rss) / Math.Max(1, peak)));
            table.Add([.. cells]);
        }
        var sb = new StringBuilder();
        sb.AppendLine(quick ? "# Buffer pools when idle (QUICK run: 12 s; a smoke test, not the figures)" : "# Buffer pools when idle");
        sb.AppendLine();
        string command = "dotnet run -c Release --project bench -- pool-idle" + (quick ? " --quick" : "");
        RunInfo.AppendProvenance(sb, command, total.Elapsed, 0, command, loadBefore, RunInfo.LoadAverage());
        sb.AppendLine($"Each pool in a process of its own: rent {Buffers:N0} buffers of {BufferSize} B (64 MiB), write each, return them all, then " +
                      $"stay idle for {seconds} s, reading RSS every second. RSS is the growth over the process's RSS just before the burst " +
                      "(after the pool, and for Kestrel a started server on loopback, were set up), so the runtime's own memory is left out.");
        sb.AppendLine();
        sb.Append(table);
        sb.AppendLine();
        sb.AppendLine("- arena: `ArenaMemoryPool` with long-term pins over a heap whose background thread runs (`StartBackgroundCompaction`), " +
                      "default options: wholly free pageblocks are decommitted after `DecommitDelay` (10 s), free runs purged one to two delays after their last use.");
        sb.AppendLine("- kestrel: the pool a started Kestrel server's `IMemoryPoolFactory<byte>` creates (PinnedBlockMemoryPool, POH arrays), whose " +
                      ".NET 10 eviction runs from the server's heartbeat.");
        sb.AppendLine("- shared: `MemoryPool<byte>.Shared` (ArrayPool-backed arrays on the GC heap, not pinned; trimmed by the GC).");
        string outPath = Path.Combine(Paths.BenchDirectory(), "results", quick ? "pool-idle-quick.md" : "pool-idle.md");
        File.WriteAllText(outPath, sb.ToString());
        Console.WriteLine(sb.ToString());
        Console.WriteLine($"pool-idle: wrote {outPath}");
        return 0;
    }

    private static string Name(string pool) => pool switch
    {
        "arena" => "ArenaMemoryPool (long-term pins, background thread)",
        "kestrel" => "Kestrel's PinnedBlockMemoryPool (.NET 10)",
        _ => "MemoryPool<byte>.Shared",
    };

    private static int StartChild(string pool, int seconds, string outFile)
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to start the child with");
        string? assembly = Assembly.GetEntryAssembly()?.Location;
        var psi = new ProcessStartInfo(process) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(process) == "dotnet" && !string.IsNullOrEmpty(assembly)) psi.ArgumentList.Add(assembly);
        foreach (string a in new[] { ChildCommand, pool, seconds.ToString(Inv), outFile }) psi.ArgumentList.Add(a);
        using Process child = Process.Start(psi)!;
        child.WaitForExit();
        return child.ExitCode;
    }

    /// <summary>The child: one pool, one burst, then RSS every second.</summary>
    public static int Child(string[] args)
    {
        string pool = args[0];
        int seconds = int.Parse(args[1], Inv);
        string outFile = args[2];
        NativeHeap? heap = null;
        WebApplication? app = null;
        MemoryPool<byte> memoryPool;
        switch (pool)
        {
            case "arena":
                heap = new NativeHeap(new HeapOptions());
                heap.StartBackgroundCompaction();
                memoryPool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
                break;
            case "kestrel":
                WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
                builder.Logging.ClearProviders();
                builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
                app = builder.Build();
                app.StartAsync().GetAwaiter().GetResult();
                memoryPool = app.Services.GetRequiredService<IMemoryPoolFactory<byte>>().Create();
                break;
            default:
                memoryPool = MemoryPool<byte>.Shared;
                break;
        }
        var rents = new IMemoryOwner<byte>[Buffers];
        using var statm = new StatmReader();
        // Warm-up burst (JIT, first-use structures), then the baseline.
        for (int i = 0; i < 64; i++) rents[i] = memoryPool.Rent(BufferSize);
        for (int i = 0; i < 64; i++) rents[i].Dispose();
        GC.Collect();
        long rss0 = statm.Read();
        for (int i = 0; i < Buffers; i++)
        {
            rents[i] = memoryPool.Rent(BufferSize);
            rents[i].Memory.Span.Fill((byte)i);
        }
        long peak = statm.Read() - rss0;
        for (int i = 0; i < Buffers; i++) rents[i].Dispose();
        Array.Clear(rents);
        var lines = new List<string> { $"peak {peak}" };
        var clock = Stopwatch.StartNew();
        for (int t = 0; t <= seconds; t++)
        {
            while (clock.Elapsed.TotalSeconds < t) Thread.Sleep(50);
            lines.Add($"{t} {statm.Read() - rss0}");
        }
        File.WriteAllLines(outFile, lines);
        app?.StopAsync().GetAwaiter().GetResult();
        memoryPool.Dispose();
        heap?.Dispose();
        return 0;
    }
}
