using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Compaction.Bench.Scenarios;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Compaction.Bench.Web;

/// <summary>
/// The <c>web</c> command: Kestrel as shipped against Kestrel over the arena transport
/// (<see cref="ArenaMemoryWebHostBuilderExtensions.UseArenaMemory(IWebHostBuilder, ArenaMemoryOptions?)"/>, with and
/// without the heap's background thread), each server mode in a process of its own, loaded by wrk over loopback
/// (-t2 -c64, --latency) on three loads: GET of 64 KiB, POST echo of 64 KiB, GET of 100 B. Per round every mode runs
/// every load in turn (the mode order rotates between rounds); the report gives the median over the rounds of req/s,
/// p50 and p99, the server's peak RSS under each load, its RSS 30 s after the last load, and every failed request
/// (socket errors and non-2xx answers).
/// </summary>
public static partial class WebBenchmark
{
    public const string ServerCommand = "web-server";
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly string[] s_modes = ["kestrel", "arena", "arena-nobg"];
    private static readonly (string Name, string Path, bool Post)[] s_loads =
        [("GET 64 KiB", "/get64k", false), ("POST echo 64 KiB", "/echo", true), ("GET 100 B", "/small", false)];

    private sealed record LoadRun(double Rps, double P50Ms, double P99Ms, long Failures, long Requests, long RssUnderLoad);

    public static int Run(string[] args)
    {
        bool quick = args.Contains("--quick");
        int duration = ClientServer.IntArg(args, "--duration", quick ? 3 : 10);
        int rounds = ClientServer.IntArg(args, "--rounds", quick ? 1 : 3);
        int idle = ClientServer.IntArg(args, "--idle", quick ? 5 : 30);
        string? wrk = ClientServer.FindOrInstall("wrk", "install-wrk.sh", "web");
        if (wrk == null)
        {
            Console.WriteLine("web: SKIPPED: the load generator (wrk) is not installed and scripts/install-wrk.sh could not install it " +
                              "(needs apt-get and root or password-less sudo). Install Debian's wrk and run again.");
            return 0;
        }
        string luaPost = Path.Combine(Path.GetTempPath(), $"web-post-{Environment.ProcessId}.lua");
        File.WriteAllText(luaPost, "wrk.method = \"POST\"\nwrk.body = string.rep(\"a\", 65536)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n");
        string? loadBefore = RunInfo.LoadAverage();
        var total = Stopwatch.StartNew();
        var runs = new Dictionary<(string mode, int load), List<LoadRun>>();
        var idleRss = new Dictionary<string, List<long>>();
        foreach (string m in s_modes) idleRss[m] = [];
        for (int round = 0; round < rounds; round++)
        {
            for (int k = 0; k < s_modes.Length; k++)
            {
                string mode = s_modes[(k + round) % s_modes.Length];
                Console.WriteLine($"web: round {round + 1}/{rounds}, {mode}");
                using Process server = ClientServer.StartServer(ServerCommand, mode, out int port);
                try
                {
                    // Warm-up: JIT, tiering, pools, the heap's first pageblocks.
                    foreach (var load in s_loads) Wrk(wrk, port, load.Path, load.Post ? luaPost : null, 2, server.Id);
                    for (int l = 0; l < s_loads.Length; l++)
                    {
                        LoadRun r = Wrk(wrk, port, s_loads[l].Path, s_loads[l].Post ? luaPost : null, duration, server.Id);
                        Console.WriteLine($"web:   {s_loads[l].Name}: {r.Rps:F0} req/s, p50 {r.P50Ms:F2} ms, p99 {r.P99Ms:F2} ms, failures {r.Failures}, RSS {r.RssUnderLoad / 1048576.0:F1} MiB");
                        if (!runs.TryGetValue((mode, l), out List<LoadRun>? list)) runs[(mode, l)] = list = [];
                        list.Add(r);
                    }
                    Thread.Sleep(TimeSpan.FromSeconds(idle));
                    long rss = ClientServer.Rss(server.Id);
                    idleRss[mode].Add(rss);
                    Console.WriteLine($"web:   RSS {idle} s after the load: {rss / 1048576.0:F1} MiB");
                }
                finally
                {
                    try { server.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                    server.WaitForExit();
                }
            }
        }
        File.Delete(luaPost);

        var sb = new StringBuilder();
        sb.AppendLine(quick ? "# Kestrel over arena memory (QUICK run: a smoke test, not the figures)" : "# Kestrel over arena memory");
        sb.AppendLine();
        string command = "dotnet run -c Release --project bench -- web" + string.Join("", args.Select(a => " " + a));
        RunInfo.AppendProvenance(sb, command, total.Elapsed, 0, command, loadBefore, RunInfo.LoadAverage());
        sb.AppendLine($"Each server mode in a process of its own (a minimal API: GET /get64k answers 64 KiB, POST /echo copies the request body's pipe " +
                      $"into the answer's, GET /small answers 100 B), loaded by `{WrkVersion(wrk)}` over loopback: `wrk -t2 -c64 -d{duration}s --latency`, " +
                      $"after a 2 s warm-up of each load. wrk shares the 2 cores with the server. {rounds} round(s); in each, every mode runs the three loads " +
                      $"in turn, then idles {idle} s (mode order rotated between rounds). Figures are medians over the rounds; ratios are against " +
                      "Kestrel as shipped in the same run. RSS is the server process's resident memory (VmRSS): the peak sampled every 0.5 s " +
                      $"under the load, and {idle} s after the last load ended. Failures are wrk's socket errors (connect, read, write, timeout) plus non-2xx answers.");
        sb.AppendLine();
        sb.AppendLine("- kestrel: `WebApplication.CreateSlimBuilder()` + `UseKestrel` as shipped (socket transport, PinnedBlockMemoryPool).");
        sb.AppendLine("- arena: the same + `builder.WebHost.UseArenaMemory()` (arena transport: gathered `sendmsg` from pinned arena buffers, receives of 4-64 KiB; heap's background thread on).");
        sb.AppendLine("- arena-nobg: the same with `BackgroundCompaction = false`.");
        sb.AppendLine();
        for (int l = 0; l < s_loads.Length; l++)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {s_loads[l].Name}");
            sb.AppendLine();
            var table = new MarkdownTable("<Mode", "req/s", "x Kestrel", "p50 ms", "p99 ms", "p99 x Kestrel", "Failed requests", "Requests", "RSS under load MiB");
            List<LoadRun> baseRuns = runs[("kestrel", l)];
            double baseRps = Stats.Median(baseRuns.Select(r => r.Rps)), baseP99 = Stats.Median(baseRuns.Select(r => r.P99Ms));
            foreach (string mode in s_modes)
            {
                List<LoadRun> rs = runs[(mode, l)];
                double rps = Stats.Median(rs.Select(r => r.Rps)), p99 = Stats.Median(rs.Select(r => r.P99Ms));
                table.Add(mode, Fmt.N((long)rps), Fmt.F(rps / baseRps, 2), Fmt.F(Stats.Median(rs.Select(r => r.P50Ms)), 2), Fmt.F(p99, 2),
                          Fmt.F(p99 / baseP99, 2), Fmt.N(rs.Sum(r => r.Failures)), Fmt.N(rs.Sum(r => r.Requests)),
                          Fmt.F(Stats.Median(rs.Select(r => (double)r.RssUnderLoad)) / 1048576.0));
            }
            sb.Append(table);
            sb.AppendLine();
            sb.AppendLine("Every round (req/s, p99 ms): " + string.Join("; ", s_modes.Select(m =>
                $"{m} " + string.Join(", ", runs[(m, l)].Select(r => $"{r.Rps.ToString("F0", Inv)} / {r.P99Ms.ToString("F2", Inv)}")))));
            sb.AppendLine();
        }
        sb.AppendLine(CultureInfo.InvariantCulture, $"## Resident memory {idle} s after the load");
        sb.AppendLine();
        var idleTable = new MarkdownTable("<Mode", "RSS MiB (median)", "x Kestrel", "Every round MiB");
        double baseIdle = Stats.Median(idleRss["kestrel"].Select(v => (double)v));
        foreach (string mode in s_modes)
        {
            double v = Stats.Median(idleRss[mode].Select(x => (double)x));
            idleTable.Add(mode, Fmt.F(v / 1048576.0), Fmt.F(v / baseIdle, 2), string.Join(", ", idleRss[mode].Select(x => Fmt.F(x / 1048576.0))));
        }
        sb.Append(idleTable);
        string outPath = Path.Combine(Paths.BenchDirectory(), "results", args.Contains("--out") ? args[Array.IndexOf(args, "--out") + 1] : quick ? "web-quick.md" : "web.md");
        File.WriteAllText(outPath, sb.ToString());
        Console.WriteLine(sb.ToString());
        Console.WriteLine($"web: wrote {outPath}");
        return 0;
    }

    private static string WrkVersion(string wrk)
    {
        ClientServer.RunProcess(wrk, ["-v"], TimeSpan.FromSeconds(10), out string output);
        string first = output.Split('\n').FirstOrDefault(l => l.StartsWith("wrk", StringComparison.Ordinal))?.Trim() ?? "wrk";
        int cut = first.IndexOf(" [", StringComparison.Ordinal);
        return cut > 0 ? first[..cut] : first;
    }

    /// <summary>One wrk run; the server's RSS is sampled every 0.5 s meanwhile (its peak is kept).</summary>
    private static LoadRun Wrk(string wrk, int port, string path, string? script, int seconds, int serverPid)
    {
        var args = new List<string> { "-t2", "-c64", $"-d{seconds}s", "--latency" };
        if (script != null) { args.Add("-s"); args.Add(script); }
        args.Add($"http://127.0.0.1:{port}{path}");
        var psi = new ProcessStartInfo(wrk) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> output = p.StandardOutput.ReadToEndAsync(), error = p.StandardError.ReadToEndAsync();
        long peak = 0;
        while (!p.WaitForExit(500)) peak = Math.Max(peak, ClientServer.Rss(serverPid));
        string text = output.Result + error.Result;
        Match rps = RpsPattern().Match(text);
        if (!rps.Success) throw new InvalidOperationException($"wrk gave no Requests/sec:\n{text}");
        long failures = 0;
        Match socketErrors = SocketErrorsPattern().Match(text);
        if (socketErrors.Success) for (int g = 1; g <= 4; g++) failures += long.Parse(socketErrors.Groups[g].Value, Inv);
        Match non2xx = Non2xxPattern().Match(text);
        if (non2xx.Success) failures += long.Parse(non2xx.Groups[1].Value, Inv);
        Match requests = RequestsPattern().Match(text);
        return new LoadRun(double.Parse(rps.Groups[1].Value, Inv), Percentile(text, "50"), Percentile(text, "99"), failures,
                       requests.Success ? long.Parse(requests.Groups[1].Value, Inv) : 0, peak);
    }

    private static double Percentile(string text, string percent)
    {
        Match m = Regex.Match(text, @"^\s+" + percent + @"(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", RegexOptions.Multiline);
        if (!m.Success) return double.NaN;
        double v = double.Parse(m.Groups[1].Value, Inv);
        return m.Groups[2].Value switch { "us" => v / 1000, "ms" => v, "s" => v * 1000, _ => v * 60_000 };
    }

    [GeneratedRegex(@"Requests/sec:\s+([\d.]+)")]
    private static partial Regex RpsPattern();

    [GeneratedRegex(@"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")]
    private static partial Regex SocketErrorsPattern();

    [GeneratedRegex(@"Non-2xx or 3xx responses: (\d+)")]
    private static partial Regex Non2xxPattern();

    [GeneratedRegex(@"(\d+) requests in")]
    private static partial Regex RequestsPattern();

    /// <summary>The server process: one mode, on a free loopback port (printed as "listening PORT"), until killed.</summary>
    public static int Server(string[] args)
    {
        string mode = args[0];
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        if (mode != "kestrel") builder.WebHost.UseArenaMemory(new ArenaMemoryOptions { BackgroundCompaction = mode == "arena" });
        WebApplication app = builder.Build();
        byte[] big = new byte[64 * 1024], small = new byte[100];
        for (int i = 0; i < big.Length; i++) big[i] = (byte)(i * 31);
        app.MapGet("/get64k", () => Results.Bytes(big, "application/octet-stream"));
        app.MapGet("/small", () => Results.Bytes(small, "application/octet-stream"));
        app.MapPost("/echo", async (HttpContext ctx) =>
        {
            ctx.Response.ContentLength = ctx.Request.ContentLength;
            ctx.Response.ContentType = "application/octet-stream";
            await ctx.Request.BodyReader.CopyToAsync(ctx.Response.BodyWriter);
        });
        app.StartAsync().GetAwaiter().GetResult();
        Console.WriteLine($"listening {new Uri(app.Urls.First()).Port}");
        Console.Out.Flush();
        // Until the parent kills it, or closes its standard input.
        Console.In.ReadToEnd();
        return 0;
    }
}
