using System.Globalization;

namespace Compaction.Bench;

/// <summary>What a results file says about the run: the machine's load, the core's revision, THP mode, memory facts
/// of this process. Shared by the <c>micro</c> and <c>compaction</c> commands.</summary>
internal static class RunInfo
{
    /// <summary>/proc/loadavg's first three fields (Linux), to tell a quiet machine from a busy one; or null.</summary>
    public static string? LoadAverage()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>CPU ticks (USER_HZ) spent so far by the whole machine (busy, not idle) and by this process with its
    /// waited-for children (BenchmarkDotNet's builds and benchmark processes), and when.</summary>
    public readonly record struct CpuSample(long MachineBusyTicks, long OwnTicks, long Timestamp);

    /// <summary>A <see cref="CpuSample"/> from /proc/stat and /proc/self/stat (Linux), or null.</summary>
    public static CpuSample? SampleCpu()
    {
        try
        {
            if (!File.Exists("/proc/stat")) return null;
            // cpu user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
            long[] cpu = [.. File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(8).Select(s => long.Parse(s, CultureInfo.InvariantCulture))];
            long busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7];
            // Fields after the command name (which may hold spaces, hence the last ')'): utime is the 12th, then stime, cutime, cstime.
            string stat = File.ReadAllText("/proc/self/stat");
            string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            long own = long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture) + long.Parse(f[13], CultureInfo.InvariantCulture) + long.Parse(f[14], CultureInfo.InvariantCulture);
            return new CpuSample(busy, own, System.Diagnostics.Stopwatch.GetTimestamp());
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>How much CPU other processes used between two samples: the machine's busy time minus this process
    /// tree's, in core-seconds and as a share of one core; null when either sample is missing. The benchmarks' own
    /// children count as this process's only once they have exited, so take the second sample after the run.</summary>
    public static string? OtherProcessesCpu(CpuSample? before, CpuSample? after)
    {
        if (before is not CpuSample b || after is not CpuSample a) return null;
        const double ticksPerSecond = 100;   // USER_HZ on Linux
        double others = Math.Max(0, (a.MachineBusyTicks - b.MachineBusyTicks) - (a.OwnTicks - b.OwnTicks)) / ticksPerSecond;
        double wall = System.Diagnostics.Stopwatch.GetElapsedTime(b.Timestamp, a.Timestamp).TotalSeconds;
        return $"{others:F1} core-seconds over {wall:F0} s ({100 * others / Math.Max(wall, 1e-9):F0}% of one core on average)";
    }

    /// <summary>The commit the core was built from, and whether src/ had uncommitted changes ("unknown" without git).</summary>
    public static string CoreRevision()
    {
        string root = Path.GetDirectoryName(Paths.BenchDirectory())!;
        string? head = Git(root, "rev-parse --short HEAD");
        if (head == null) return "an unknown revision (no git)";
        string? dirty = Git(root, "status --porcelain -- src");
        return dirty is { Length: > 0 } ? $"{head} plus uncommitted changes in src/" : head;
    }

    /// <summary>The selected transparent-huge-page mode ("madvise", "always", "never"), or null when unknown.</summary>
    public static string? TransparentHugePages()
    {
        try
        {
            const string path = "/sys/kernel/mm/transparent_hugepage/enabled";
            if (!File.Exists(path)) return null;
            string text = File.ReadAllText(path);
            int open = text.IndexOf('['), close = text.IndexOf(']');
            return open >= 0 && close > open ? text[(open + 1)..close] : text.Trim();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The machine in one line: cores, memory, OS, runtime.</summary>
    /// <summary>
    /// The provenance block every report opens with: when and by which command it was generated, how long it took,
    /// the core's revision, the seed and the command that repeats the run, the machine and the load average.
    /// </summary>
    public static void AppendProvenance(System.Text.StringBuilder sb, string command, TimeSpan elapsed, int seed, string repeat,
                                        string? loadBefore, string? loadAfter)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        sb.AppendLine(CultureInfo.InvariantCulture, $"Generated {DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", inv)} UTC by `{command}` in {elapsed.TotalSeconds:F0} s, " +
                      $"core at {CoreRevision()}.");
        sb.AppendLine(CultureInfo.InvariantCulture, $"Seed {seed}; repeat exactly with `{repeat}`.");
        sb.AppendLine();
        sb.AppendLine("```");
        sb.AppendLine(Machine());
        if (loadBefore != null) sb.AppendLine(CultureInfo.InvariantCulture, $"Load average (1/5/15 min) before the run: {loadBefore}; after: {loadAfter}");
        sb.AppendLine("```");
        sb.AppendLine();
    }

    public static string Machine() =>
        $"{Environment.ProcessorCount} logical cores, {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1L << 30)} GiB, " +
        $"{System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}, THP mode {TransparentHugePages() ?? "unknown"}";

    private static string? Git(string dir, string arguments)
    {
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo("git", $"-C \"{dir}\" {arguments}")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            using var p = System.Diagnostics.Process.Start(psi)!;
            string output = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
