using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace Compaction.Bench.Soak;

/// <summary>
/// The soak's C part: tests/cabi/cabi_soak.c, C threads (pthreads) working a heap through the C ABI (the NativeAOT
/// library libcompaction_heap.so) with its background compactor on, in a process of its own beside the managed soak.
/// <see cref="Build"/> runs <c>scripts/cabi.sh OUT --build-only</c> (the library packed as its tarball and unpacked, gcc of the
/// program; incremental when nothing changed); <see cref="Start"/> launches it for the soak's duration; the soak samples
/// its RSS every second (<see cref="ResidentBytes"/>) and <see cref="Finish"/> parses its closing line. When gcc or
/// the publish is unavailable the part is skipped with the reason, which the soak prints and writes to soak.md.
/// </summary>
internal sealed partial class CAbiSoak : IDisposable
{
    private readonly Process _process;
    private readonly List<string> _output = [];
    private readonly List<string> _errors = [];

    private CAbiSoak(Process process)
    {
        _process = process;
        process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_output) { _output.Add(e.Data); Console.WriteLine("  " + e.Data); } };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_errors) { _errors.Add(e.Data); Console.WriteLine("  " + e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    /// <summary>What the C soak counted: its closing line's figures.</summary>
    public sealed record Result(long Operations, long Verifications, long Failures, int Threads, long BytesMoved, long LongTermPinMigrations, string? FirstFailure);

    /// <summary>Builds the library and cabi_soak into out/cabi of the source tree. Returns the program's path, or null
    /// with <paramref name="skipped"/> saying why (no gcc, no Linux, the publish or compile failed).</summary>
    public static string? Build(out string? skipped)
    {
        skipped = null;
        if (!OperatingSystem.IsLinux()) { skipped = "the C ABI is built for linux-x64 only"; return null; }
        string root = Path.GetFullPath(Path.Combine(Paths.BenchDirectory(), ".."));
        string script = Path.Combine(root, "scripts", "cabi.sh"), outDir = Path.Combine(root, "out", "cabi");
        if (!File.Exists(script)) { skipped = $"{script} not found"; return null; }
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add(outDir);
        psi.ArgumentList.Add("--build-only");
        Console.WriteLine($"soak: building the C ABI and cabi_soak (scripts/cabi.sh {outDir} --build-only)");
        using Process build = Process.Start(psi)!;
        Task<string> stdout = build.StandardOutput.ReadToEndAsync(), stderr = build.StandardError.ReadToEndAsync();
        if (!build.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            build.Kill(entireProcessTree: true);
            skipped = "scripts/cabi.sh did not finish within 15 minutes";
            return null;
        }
        string message = (stderr.Result + stdout.Result).Trim();
        string lastLines = string.Join(" / ", message.Split('\n').TakeLast(3).Select(l => l.Trim()));
        if (build.ExitCode == 3) { skipped = lastLines.Length > 0 ? lastLines : "gcc is not installed"; return null; }
        if (build.ExitCode != 0) { skipped = $"scripts/cabi.sh failed with exit code {build.ExitCode} ({lastLines})"; return null; }
        string program = Path.Combine(outDir, "cabi_soak");
        if (!File.Exists(program)) { skipped = $"{program} was not built"; return null; }
        return program;
    }

    /// <summary>Starts the C soak for <paramref name="seconds"/> with <paramref name="threads"/> C threads.</summary>
    public static CAbiSoak Start(string program, int seconds, int threads)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(seconds.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add(threads.ToString(CultureInfo.InvariantCulture));
        return new CAbiSoak(Process.Start(psi)!);
    }

    /// <summary>The C soak's resident bytes now (null once it has ended).</summary>
    public long? ResidentBytes() => _process.HasExited ? null : Scenarios.ProcessMemory.ResidentBytes(_process.Id);

    /// <summary>Waits for the C soak (it stops by itself after its seconds, then frees and verifies what it holds) and
    /// reads its closing line. A process that crashed, hung past <paramref name="grace"/> or printed no closing line
    /// comes back as one failure saying so.</summary>
    public Result Finish(TimeSpan grace)
    {
        if (!_process.WaitForExit(grace))
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
            return Failed($"cabi_soak did not end within {grace.TotalSeconds:F0} s of its time (killed)");
        }
        _process.WaitForExit();   // the asynchronous readers have drained both streams
        string? last;
        lock (_output) last = _output.LastOrDefault(l => ClosingLine().IsMatch(l));
        string? firstError;
        lock (_errors) firstError = _errors.FirstOrDefault();
        if (last == null) return Failed($"cabi_soak exited with code {_process.ExitCode} without its closing line{(firstError != null ? ": " + firstError : "")}");
        Match m = ClosingLine().Match(last);
        long Get(string name) => long.Parse(m.Groups[name].Value, CultureInfo.InvariantCulture);
        long failures = Get("failures");
        if (failures == 0 && _process.ExitCode != 0) failures = 1;   // a non-zero exit is a failure even if none was counted
        return new Result(Get("operations"), Get("verifications"), failures, (int)Get("threads"), Get("moved"), Get("ltp"),
                          failures != 0 ? firstError ?? $"cabi_soak exited with code {_process.ExitCode}" : null);
    }

    public void Dispose() => _process.Dispose();

    private static Result Failed(string why) => new(0, 0, 1, 0, 0, 0, why);

    [GeneratedRegex(@"^cabi_soak: operations (?<operations>\d+) verifications (?<verifications>\d+) failures (?<failures>\d+) threads (?<threads>\d+) seconds \d+ bytes_moved (?<moved>\d+) long_term_pin_migrations (?<ltp>\d+)$")]
    private static partial Regex ClosingLine();
}
