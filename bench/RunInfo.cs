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
