using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Compaction.Allocator;
using Compaction.Bench.Scenarios;

namespace Compaction.Bench.Cache;

/// <summary>
/// The <c>cache</c> command: a key-value cache server speaking RESP (SET, GET, PING, CONFIG), its values in native
/// memory, loaded by redis-benchmark over loopback. Three server modes, each in a process of its own: values from
/// malloc (<see cref="NativeMemory.Alloc(nuint)"/>), from a <see cref="NativeHeap"/> without compaction, and from a heap
/// with its background thread. Phases, after a warm-up: SET of 100 B values over a key space, SET of 1,000 B values over
/// the same keys (every old value freed), SET of 100 B again (the large ones freed: the heap is fragmented and the
/// background compactor's waste-driven run works while the load goes on), then GET. Each phase's throughput and
/// latencies (p50, p99, max: redis-benchmark's summary), the server's RSS after the phases and after an idle window.
/// </summary>
public static partial class CacheBenchmark
{
    public const string ServerCommand = "cache-server";
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly string[] s_modes = ["malloc", "native", "native-background"];

    private sealed record Phase(string Name, string Test, int ValueBytes);

    private static readonly Phase[] s_phases =
    [
        new("SET 100 B", "set", 100), new("SET 1,000 B over the same keys", "set", 1000),
        new("SET 100 B again (fragmented)", "set", 100), new("GET", "get", 0),
    ];

    private sealed record PhaseRun(double Rps, double P50Ms, double P99Ms, double MaxMs);

    public static int Run(string[] args)
    {
        bool quick = args.Contains("--quick");
        int rounds = ClientServer.IntArg(args, "--rounds", quick ? 1 : 3);
        int requests = ClientServer.IntArg(args, "--requests", quick ? 50_000 : 400_000);
        int keys = ClientServer.IntArg(args, "--keys", quick ? 25_000 : 200_000);
        int clients = ClientServer.IntArg(args, "--clients", 16);
        int idle = ClientServer.IntArg(args, "--idle", quick ? 3 : 15);
        string? client = ClientServer.FindOrInstall("redis-benchmark", "install-redis-benchmark.sh", "cache");
        if (client == null)
        {
            Console.WriteLine("cache: SKIPPED: the client (redis-benchmark, Debian's redis-tools) is not installed and " +
                              "scripts/install-redis-benchmark.sh could not install it (needs apt-get and root or password-less sudo).");
            return 0;
        }
        string? loadBefore = RunInfo.LoadAverage();
        var total = Stopwatch.StartNew();
        var runs = new Dictionary<(string mode, int phase), List<PhaseRun>>();
        var rssAfter = s_modes.ToDictionary(m => m, _ => new List<long>());
        var rssIdle = s_modes.ToDictionary(m => m, _ => new List<long>());
        for (int round = 0; round < rounds; round++)
        {
            for (int k = 0; k < s_modes.Length; k++)
            {
                string mode = s_modes[(k + round) % s_modes.Length];
                Console.WriteLine($"cache: round {round + 1}/{rounds}, {mode}");
                using Process server = ClientServer.StartServer(ServerCommand, mode, out int port);
                try
                {
                    // Warm-up: JIT and tiering, the connections' threads, the first pages.
                    Load(client, port, clients, "set", Math.Max(1000, requests / 2), Math.Max(1000, keys / 2), 100);
                    Load(client, port, clients, "get", Math.Max(1000, requests / 4), Math.Max(1000, keys / 2), 0);
                    for (int p = 0; p < s_phases.Length; p++)
                    {
                        PhaseRun r = Load(client, port, clients, s_phases[p].Test, requests, keys, s_phases[p].ValueBytes);
                        Console.WriteLine($"cache:   {s_phases[p].Name}: {r.Rps:F0} req/s, p50 {r.P50Ms:F3} ms, p99 {r.P99Ms:F3} ms, max {r.MaxMs:F1} ms");
                        if (!runs.TryGetValue((mode, p), out List<PhaseRun>? list)) runs[(mode, p)] = list = [];
                        list.Add(r);
                    }
                    rssAfter[mode].Add(ClientServer.Rss(server.Id));
                    Thread.Sleep(TimeSpan.FromSeconds(idle));
                    rssIdle[mode].Add(ClientServer.Rss(server.Id));
                }
                finally
                {
                    try { server.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                    server.WaitForExit();
                }
            }
        }

        var sb = new StringBuilder();
        sb.AppendLine(quick ? "# A cache server over native memory (QUICK run: a smoke test, not the figures)" : "# A cache server over native memory");
        sb.AppendLine();
        string command = "dotnet run -c Release --project bench -- cache" + string.Join("", args.Select(a => " " + a));
        RunInfo.AppendProvenance(sb, command, total.Elapsed, 0, command, loadBefore, RunInfo.LoadAverage());
        sb.AppendLine($"A RESP server (SET, GET; one thread per connection, values in native memory, keys in a managed dictionary) in a process " +
                      $"of its own per mode, loaded by `redis-benchmark` ({ClientVersion(client)}) over loopback with {clients} connections, " +
                      $"{requests:N0} requests per phase over {keys:N0} random keys (`-r`), after a warm-up. The client shares the 2 cores with the " +
                      $"server. {rounds} round(s), mode order rotated between rounds; figures are medians over the rounds, and *max* also lists every " +
                      "round's. Latencies are redis-benchmark's, from the client's side (ms).");
        sb.AppendLine();
        sb.AppendLine("- malloc: values from glibc's malloc (`NativeMemory.Alloc`).");
        sb.AppendLine("- native: values in a `NativeHeap` (movable blocks, pinned while read or written), no compaction.");
        sb.AppendLine("- native-background: the same with `StartBackgroundCompaction()` (default options).");
        sb.AppendLine();
        for (int p = 0; p < s_phases.Length; p++)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {s_phases[p].Name}");
            sb.AppendLine();
            var table = new MarkdownTable("<Mode", "req/s", "p50 ms", "p99 ms", "max ms", "max, every round");
            foreach (string mode in s_modes)
            {
                List<PhaseRun> rs = runs[(mode, p)];
                table.Add(mode, Fmt.N((long)Stats.Median(rs.Select(r => r.Rps))), Fmt.F(Stats.Median(rs.Select(r => r.P50Ms)), 3),
                          Fmt.F(Stats.Median(rs.Select(r => r.P99Ms)), 3), Fmt.F(Stats.Median(rs.Select(r => r.MaxMs)), 1),
                          string.Join(", ", rs.Select(r => Fmt.F(r.MaxMs, 1))));
            }
            sb.Append(table);
            sb.AppendLine();
        }
        sb.AppendLine("## Server RSS");
        sb.AppendLine();
        var rssTable = new MarkdownTable("<Mode", "after the phases MiB", $"{idle} s later MiB", "every round (after / later)");
        foreach (string mode in s_modes)
            rssTable.Add(mode, Fmt.F(Stats.Median(rssAfter[mode].Select(v => (double)v)) / 1048576.0), Fmt.F(Stats.Median(rssIdle[mode].Select(v => (double)v)) / 1048576.0),
                         string.Join(", ", rssAfter[mode].Zip(rssIdle[mode], (a, b) => $"{Fmt.F(a / 1048576.0)} / {Fmt.F(b / 1048576.0)}")));
        sb.Append(rssTable);
        string outPath = Path.Combine(Paths.BenchDirectory(), "results", args.Contains("--out") ? args[Array.IndexOf(args, "--out") + 1] : quick ? "cache-quick.md" : "cache.md");
        File.WriteAllText(outPath, sb.ToString());
        Console.WriteLine(sb.ToString());
        Console.WriteLine($"cache: wrote {outPath}");
        return 0;
    }

    /// <summary>One redis-benchmark run of one test; its summary's throughput and latencies.</summary>
    private static PhaseRun Load(string client, int port, int clients, string test, int requests, int keys, int valueBytes)
    {
        var args = new List<string> { "-h", "127.0.0.1", "-p", port.ToString(Inv), "-c", clients.ToString(Inv), "-t", test,
                                      "-n", requests.ToString(Inv), "-r", keys.ToString(Inv) };
        if (valueBytes > 0) { args.Add("-d"); args.Add(valueBytes.ToString(Inv)); }
        ClientServer.RunProcess(client, [.. args], TimeSpan.FromMinutes(10), out string text);
        Match rps = ThroughputPattern().Match(text);
        Match lat = LatencyPattern().Match(text);
        if (!rps.Success || !lat.Success) throw new InvalidOperationException($"redis-benchmark gave no summary:\n{text}");
        double L(int g) => double.Parse(lat.Groups[g].Value, Inv);
        return new PhaseRun(double.Parse(rps.Groups[1].Value, Inv), L(3), L(5), L(6));
    }

    [GeneratedRegex(@"throughput summary:\s+([\d.]+) requests per second")]
    private static partial Regex ThroughputPattern();

    // avg, min, p50, p95, p99, max
    [GeneratedRegex(@"avg\s+min\s+p50\s+p95\s+p99\s+max\s*\n\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")]
    private static partial Regex LatencyPattern();

    private static string ClientVersion(string client)
    {
        ClientServer.RunProcess(client, ["--version"], TimeSpan.FromSeconds(10), out string output);
        return output.Trim().Split('\n')[0];
    }

    /// <summary>The server process: one mode, on a free loopback port (printed as "listening PORT"), until killed or
    /// its standard input closes.</summary>
    public static int Server(string[] args)
    {
        string mode = args[0];
        using var store = new ValueStore(mode);
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start(512);
        new Thread(() =>
        {
            while (true)
            {
                Socket s;
                try { s = listener.AcceptSocket(); }
                catch (SocketException) { return; }
                catch (ObjectDisposedException) { return; }
                s.NoDelay = true;
                new Thread(() => Connection.Serve(s, store)) { IsBackground = true, Name = "cache connection" }.Start();
            }
        })
        { IsBackground = true, Name = "cache accept" }.Start();
        Console.WriteLine($"listening {((IPEndPoint)listener.LocalEndpoint).Port}");
        Console.Out.Flush();
        Console.In.ReadToEnd();
        listener.Stop();
        return 0;
    }
}
