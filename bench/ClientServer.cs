using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace Compaction.Bench;

/// <summary>
/// What the benchmarks that load a server of their own with an outside client share (<c>web</c>: Kestrel and wrk;
/// <c>cache</c>: a RESP server and redis-benchmark): the client found on the PATH or installed by the project's script,
/// the server started as a child process of this program (a hidden sub-command and a mode; it prints
/// "listening PORT"), its RSS, and the client's runs.
/// </summary>
internal static class ClientServer
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The integer after option <paramref name="name"/>, or <paramref name="fallback"/>.</summary>
    public static int IntArg(string[] args, string name, int fallback)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], Inv) : fallback;
    }

    /// <summary>The path of <paramref name="tool"/> on the PATH, or null.</summary>
    public static string? Which(string tool)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':'))
        {
            string p = Path.Combine(dir, tool);
            if (dir.Length > 0 && File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>The client <paramref name="tool"/>, installed first by scripts/<paramref name="installScript"/> when
    /// it is not on the PATH; null when it still is not (the caller reports itself SKIPPED).</summary>
    public static string? FindOrInstall(string tool, string installScript, string benchmark)
    {
        string? path = Which(tool);
        if (path != null) return path;
        string script = Path.Combine(Paths.BenchDirectory(), "..", "scripts", installScript);
        Console.WriteLine($"{benchmark}: {tool} not found; running {script}");
        if (File.Exists(script)) RunProcess("bash", [script], TimeSpan.FromMinutes(5), out _);
        return Which(tool);
    }

    /// <summary>Runs a process to its end (killed after <paramref name="timeout"/>); its standard output and error.</summary>
    public static int RunProcess(string file, string[] args, TimeSpan timeout, out string output)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(timeout)) p.Kill(true);
        output += err.Result;
        return p.ExitCode;
    }

    /// <summary>The resident memory of process <paramref name="pid"/> (VmRSS), or 0 if it cannot be read.</summary>
    public static long Rss(int pid)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0], Inv) * 1024;
        }
        catch (IOException) { }
        return 0;
    }

    /// <summary>Starts this program again as the server: the hidden <paramref name="serverCommand"/> with
    /// <paramref name="mode"/>, and waits for its "listening PORT" line. The server runs until killed or until its
    /// standard input closes.</summary>
    public static Process StartServer(string serverCommand, string mode, out int port)
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to start the server with");
        string? assembly = Assembly.GetEntryAssembly()?.Location;
        var psi = new ProcessStartInfo(process) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardInput = true };
        if (Path.GetFileNameWithoutExtension(process) == "dotnet" && !string.IsNullOrEmpty(assembly)) psi.ArgumentList.Add(assembly);
        psi.ArgumentList.Add(serverCommand);
        psi.ArgumentList.Add(mode);
        Process child = Process.Start(psi)!;
        string? line;
        while ((line = child.StandardOutput.ReadLine()) != null && !line.StartsWith("listening ", StringComparison.Ordinal)) { }
        if (line == null) throw new InvalidOperationException($"the {mode} server did not start");
        port = int.Parse(line["listening ".Length..], Inv);
        return child;
    }
}
