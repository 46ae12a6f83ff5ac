using System.Globalization;

namespace Compaction.Tests;

/// <summary>Tests that measure or exhaust something the whole process shares (resident memory, the number of
/// mappings, the heap tags every live heap takes) run in this collection: alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideResources
{
    public const string Name = "Process-wide resources";
}

/// <summary>Tests whose failure on the code they were written against takes the whole test process down (an access
/// violation, or the runtime aborting when the OS refuses it memory). They carry this trait so that the rest of the
/// suite can be run without them: <c>dotnet test --filter "Category!=ProcessFatalOnFailure"</c>.</summary>
internal static class ProcessFatal
{
    public const string Trait = "Category";
    public const string Value = "ProcessFatalOnFailure";
}

/// <summary>Readings of /proc for the tests that bound the process's resources (Linux only).</summary>
internal static class ProcSelf
{
    /// <summary>Number of mappings of this process: the lines of /proc/self/maps.</summary>
    public static int MapCount()
    {
        int n = 0;
        using var reader = new StreamReader("/proc/self/maps");
        while (reader.ReadLine() != null) n++;
        return n;
    }

    /// <summary>The kernel's limit on mappings per process (vm.max_map_count).</summary>
    public static int MaxMapCount() => int.Parse(File.ReadAllText("/proc/sys/vm/max_map_count").Trim(), CultureInfo.InvariantCulture);

    /// <summary>Resident set size of this process in bytes (VmRSS of /proc/self/status).</summary>
    public static long ResidentBytes()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("/proc/self/status has no VmRSS line");
    }
}
