namespace Compaction.TraceAnalyzer;

/// <summary>The <c>nativeheap-trace</c> .NET tool: <see cref="TraceAnalyzerCommand"/>.</summary>
public static class Program
{
    public static int Main(string[] args) => TraceAnalyzerCommand.Run(args);
}
