namespace Compaction.Tests;

/// <summary>A test that needs Linux (its system calls, /proc or /sys, or a subject only Linux has): reported as
/// skipped, with the reason, elsewhere.</summary>
public sealed class LinuxFactAttribute : FactAttribute
{
    /// <param name="because">What the test needs of Linux, for the skip message.</param>
    public LinuxFactAttribute(string because = "/proc, madvise and the Linux back end")
    {
        if (!OperatingSystem.IsLinux()) Skip = $"Linux-specific: needs Linux ({because}); this is {Environment.OSVersion}";
    }
}

/// <summary>A test that builds C programs: reported as skipped, with the reason, where there is no Linux, or no gcc or
/// pkg-config on the PATH (scripts/cabi.sh, which the tests run, needs them).</summary>
public sealed class CCompilerFactAttribute : FactAttribute
{
    public CCompilerFactAttribute()
    {
        if (!OperatingSystem.IsLinux()) Skip = "needs Linux: the C ABI is published for linux-x64 only";
        else if (!OnPath("gcc")) Skip = "needs gcc on the PATH to build the C programs (Debian: apt-get install gcc)";
        else if (!OnPath("pkg-config")) Skip = "needs pkg-config on the PATH to build the C programs against the packed library (Debian: apt-get install pkg-config)";
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, program)));
}
