using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using Compaction.Interop.CAbi;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The C ABI end to end: scripts/cabi.sh packs the NativeAOT library as its tarball, unpacks it and builds tests/cabi's C
/// programs with gcc through pkg-config, as a C user would, and
/// runs them. The C test exercises every entry point, every error code and two threads beside the background
/// compactor; the layout program's offsets must equal the C# declarations', field by field.
/// </summary>
public sealed class CAbiTests(ITestOutputHelper output)
{
    private static readonly Lazy<(int exitCode, string stdout, string outDir)> s_run = new(Run);

    private static (int, string, string) Run()
    {
        string root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../.."));
        string outDir = Path.Combine(Path.GetTempPath(), $"cabi-{Environment.ProcessId}");
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(root, "scripts/cabi.sh"));
        psi.ArgumentList.Add(outDir);
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + err.Result, outDir);
    }

    /// <summary>Runs the build once and shows its output. The tests are skipped (CCompilerFact) where gcc or pkg-config is
    /// missing, so scripts/cabi.sh's "skipped" exit (3) here is a failure, not a pass.</summary>
    private void Build()
    {
        (int code, string text, _) = s_run.Value;
        output.WriteLine(text);
        Assert.True(code != 3, "scripts/cabi.sh found no gcc or no pkg-config although the PATH has both: " + text);
    }

    [CCompilerFact]
    public void TheCProgramExercisesEveryEntryPointAndErrorWithTwoThreads()
    {
        Build();
        (int code, string text, _) = s_run.Value;
        Assert.True(code == 0, text);
        Assert.Contains("checks, 0 failed", text);
    }

    [CCompilerFact]
    [Trait(ProcessFatal.Trait, ProcessFatal.Value)]
    public void DestroyRacingEveryCallFromCThreadsNeverCrashesAndEveryCallEndsCleanly()
    {
        Build();
        (int code, string text, _) = s_run.Value;
        Assert.True(code == 0, text);
        Assert.Matches(@"cabi_destroy_race: \d+ rounds, \d+ calls, 0 failed", text);
    }

    [CCompilerFact]
    public void TheHeadersStructLayoutsEqualTheCSharpDeclarations()
    {
        Build();
        (_, _, string outDir) = s_run.Value;
        string[] lines = File.ReadAllLines(Path.Combine(outDir, "layout.txt"));
        var types = new Dictionary<string, Type> { ["cna_heap_options"] = typeof(CnaHeapOptions), ["cna_pin_info"] = typeof(CnaPinInfo), ["cna_stats"] = typeof(CnaStats) };
        int compared = 0;
        foreach (string line in lines)
        {
            string[] parts = line.Split(' ');
            string[] name = parts[0].Split('.');
            Type t = types[name[0]];
            long c = long.Parse(parts[1], CultureInfo.InvariantCulture);
            if (name[1] == "sizeof")
            {
                Assert.Equal(c, Marshal.SizeOf(t));
            }
            else
            {
                string field = string.Concat(name[1].Split('_').Select(w => char.ToUpperInvariant(w[0]) + w[1..]));
                Assert.True(t.GetField(field, BindingFlags.Public | BindingFlags.Instance) != null, $"{t.Name} has no field {field} (C: {name[1]})");
                Assert.Equal(c, (long)Marshal.OffsetOf(t, field));
            }
            compared++;
        }
        // Every C# field appears in the header too.
        Assert.Equal(types.Values.Sum(t => t.GetFields(BindingFlags.Public | BindingFlags.Instance).Length + 1), compared);
    }
}
