using System.Diagnostics;
using System.Reflection;
using Compaction.Bench.Footprint;
using Compaction.Bench.Micro;
using Compaction.Bench.Scenarios;

namespace Compaction.Bench;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project bench -- SCENARIO [options]</c>. The first argument names the
/// scenario; add new ones to the switch in <see cref="Main"/> (and to <see cref="Usage"/>).
/// </summary>
public static class Program
{
    private const string ReexecMarker = "ALLOCATOR_BENCH_REEXEC";

    private const string Usage = """
        usage: dotnet run -c Release --project bench -- SCENARIO [options]
          micro [--smoke] [--filter GLOB]... [--launches N] [--out FILE]
                  BenchmarkDotNet micro benchmarks vs glibc, mimalloc, tcmalloc, jemalloc, ArrayPool;
                  summary table -> bench/results/micro.md (--smoke: micro-smoke.md, --filter: micro-filtered.md)
          demo [--seed N] [--arena-mib N] [--fill-percent P] [--out DIR]
                  fill a heap with a seeded mix of movable and unmovable blocks, free half, verify, print statistics
          compaction [--quick] [--seed N] [--only NAME[,NAME...]] [--out FILE]
                  compaction scenarios, each beside its baseline: high-order success, throughput vs memcpy,
                  proactive vs on-demand latency, mutator latency under the background compactor, RSS vs live;
                  -> bench/results/compaction.md (--quick: compaction-quick.md, under a minute)
          footprint [--quick] [--seed N] [--reps N] [--only mesh,redis,burst] [--allocators A,B] [--limit-factor F] [--out FILE]
                  peak and at-rest resident memory and operations/s on three service workloads (Mesh's adversarial
                  case, Redis-style churn, burst then idle), each allocator in a child process of its own: glibc,
                  mimalloc, jemalloc, tcmalloc, byte[] on the .NET GC (workstation, server), NativeHeap with explicit
                  Compact(), with background compaction only, and with MemoryLimit = F x peak live (default 1.25);
                  -> bench/results/footprint.md + footprint-WORKLOAD.svg (--quick: footprint-quick.md, ~2 min)
          pool-idle [--quick]
                  buffer pools after a 64 MiB burst of 4 KiB rents is returned, one process each: the arena pool,
                  Kestrel's PinnedBlockMemoryPool, MemoryPool<byte>.Shared; RSS every second -> bench/results/pool-idle.md
          analyze FILE.nettrace [--out DIR] | analyze --pid N [--seconds S] [--out DIR]
                  the trace analyzer (tools/TraceAnalyzer, also the .NET tool nativeheap-trace): the heap's events
                  (EventSource Compaction-NativeHeap) from a trace or a live process: passes by trigger, p50/p99/max
                  pause, MB/s moved, failures by reason, wakes, releases; files (an SVG, the recording) only into --out
          soak [--seconds N (60)] [--threads N] [--c-threads N (2)] [--no-cabi]
                  every feature at once on one heap with the background compactor on, and beside it C threads
                  through the C ABI (tests/cabi/cabi_soak.c; built by scripts/cabi.sh, skipped with the reason
                  when gcc or the NativeAOT publish is unavailable); failures must be 0 and RSS flat once warm
                  -> bench/results/soak.md, soak.svg
          web [--quick] [--rounds N (3)] [--duration S (10)] [--idle S (30)]
                  Kestrel as shipped vs Kestrel over the arena transport (UseArenaMemory, with and without the background
                  thread), each in its own process, loaded by wrk (-t2 -c64 --latency) on GET 64 KiB, POST echo 64 KiB and
                  GET 100 B: req/s, p50, p99, failures, RSS under load and after idling -> bench/results/web.md
                  (wrk is installed by scripts/install-wrk.sh; the command says SKIPPED when it cannot be)
          cache [--quick] [--rounds N (3)] [--requests N] [--keys N] [--clients N (16)] [--idle S (15)]
                  a RESP cache server whose values are in malloc'd memory, a NativeHeap, or a NativeHeap with its
                  background thread, each in its own process, loaded by redis-benchmark: SET 100 B, SET 1,000 B over
                  the same keys, SET 100 B again (fragmented), GET; req/s, p50, p99, max, RSS -> bench/results/cache.md
                  (redis-benchmark is installed by scripts/install-redis-benchmark.sh; SKIPPED when it cannot be)
          peers   which peer allocators load in this process
        peers are installed by scripts/install-peers.sh (a missing one is skipped, never fatal)
        """;

    public static int Main(string[] args)
    {
        string scenario = args.Length > 0 ? args[0] : "help";
        string[] rest = args.Length > 0 ? args[1..] : [];
        switch (scenario)
        {
            case "micro":
                return ReexecWithJemallocTunable(args) ?? MicroSuite.Run(rest);
            case "demo":
                return DemoScenario.Run(rest);
            case "compaction":
                return CompactionSuite.Run(rest);
            case "footprint":
                return FootprintSuite.Run(rest);
            case FootprintChild.Command:   // hidden: one allocator x workload x seed, started by footprint
                return FootprintChild.Run(rest);
            case "pool-idle":
                return PoolIdleScenario.Run(rest);
            case PoolIdleScenario.ChildCommand:
                return PoolIdleScenario.Child(rest);
            case "analyze":
                return TraceAnalyzer.TraceAnalyzerCommand.Run(rest, "dotnet run -c Release --project bench -- analyze");
            case Analysis.EventsChild.Command:
                return Analysis.EventsChild.Run();
            case "soak":
                return Soak.SoakRun.Run(rest);
            case "web":
                return Web.WebBenchmark.Run(rest);
            case Web.WebBenchmark.ServerCommand:   // hidden: one server mode, started by web
                return Web.WebBenchmark.Server(rest);
            case "cache":
                return Cache.CacheBenchmark.Run(rest);
            case Cache.CacheBenchmark.ServerCommand:   // hidden: one cache server mode, started by cache
                return Cache.CacheBenchmark.Server(rest);
            case "peers":
                return ReexecWithJemallocTunable(args) ?? (Peers.PrintReport() == 0 ? 0 : 1);
            case "help" or "-h" or "--help":
                Console.WriteLine(Usage);
                return 0;
            default:
                Console.Error.WriteLine($"unknown scenario '{scenario}'");
                Console.Error.WriteLine(Usage);
                return 2;
        }
    }

    /// <summary>
    /// jemalloc only loads into a process that started with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096.
    /// The benchmark job sets it for its child processes; this gives it to the host too (which decides which peers
    /// to run, and runs them itself in --smoke's in-process mode) by starting this program again once with it set.
    /// Returns the child's exit code, or null to go on in this process (already set, or the restart failed).
    /// </summary>
    private static int? ReexecWithJemallocTunable(string[] args)
    {
        if (Peers.HasJemallocTunable || Environment.GetEnvironmentVariable(ReexecMarker) != null || !OperatingSystem.IsLinux()) return null;
        string? process = Environment.ProcessPath;
        string? assembly = Assembly.GetEntryAssembly()?.Location;
        if (process == null || string.IsNullOrEmpty(assembly)) return null;
        var psi = new ProcessStartInfo(process) { UseShellExecute = false };
        // Under `dotnet app.dll` the host is dotnet itself; under the apphost (dotnet run) it is the program.
        if (Path.GetFileNameWithoutExtension(process) == "dotnet") psi.ArgumentList.Add(assembly);
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment[Peers.TunablesVariable] = Peers.TunablesWithJemalloc();
        psi.Environment[ReexecMarker] = "1";
        try
        {
            using Process child = Process.Start(psi)!;
            child.WaitForExit();
            return child.ExitCode;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"// could not restart with {Peers.TunablesVariable} set ({e.Message}); jemalloc will be skipped");
            return null;
        }
    }
}
