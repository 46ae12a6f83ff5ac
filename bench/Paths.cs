namespace Compaction.Bench;

internal static class Paths
{
    /// <summary>The bench/ folder of the source tree (where Allocator.Bench.csproj is), found by walking up from the
    /// binary; falls back to ./bench, then the current directory.</summary>
    public static string BenchDirectory()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Allocator.Bench.csproj"))) return d.FullName;
        string cwdBench = Path.Combine(Directory.GetCurrentDirectory(), "bench");
        return Directory.Exists(cwdBench) ? cwdBench : Directory.GetCurrentDirectory();
    }
}
