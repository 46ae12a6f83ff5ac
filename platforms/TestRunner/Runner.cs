using System.Diagnostics;
using System.Reflection;
using Xunit.Abstractions;

namespace Compaction.Tests.Runner;

/// <summary>
/// Runs the [Fact]s and [InlineData] [Theory]s of the test classes compiled into this assembly, one at a time, in
/// the test project's own code (tests/), under an emulator: each test class is constructed per test (its constructor
/// may take an <see cref="ITestOutputHelper"/>), disposed after. What it cannot run as xunit would (other constructor
/// parameters, [MemberData] and other data sources, skipped facts) it reports as skipped, with the reason.
/// Arguments: <c>--platform NAME</c> (wine, qemu or native) applies the plan of the emulated runs,
/// platforms/TestRunner/emulated-tests.txt (copied next to the executable; <c>--plan FILE</c> names another): every
/// test a line of it names for that platform is left out and reported as skipped with the line's reason. Further
/// arguments: class-name filters (a test runs when its class's full name contains one of them; none: all), and
/// exclusions, "-Name" (a test whose full name, class and method, contains Name is left out and counted skipped).
/// Closes with the skipped tests counted by reason, then "tests: N passed, N failed, N skipped"; exit 1 on any
/// failure.
/// </summary>
internal static class Program
{
    private sealed class Output : ITestOutputHelper
    {
        public readonly List<string> Lines = [];
        public void WriteLine(string message) => Lines.Add(message);
        public void WriteLine(string format, params object[] args) => Lines.Add(string.Format(format, args));
    }

    /// <summary>How long one test may run (TEST_TIMEOUT_SECONDS, default 300): emulators are slow, not that slow.</summary>
    private static readonly TimeSpan TestTimeout =
        TimeSpan.FromSeconds(int.TryParse(Environment.GetEnvironmentVariable("TEST_TIMEOUT_SECONDS"), out int s) ? s : 300);

    /// <summary>One line of the plan: the platforms it applies to, the text a test's full name contains, and why
    /// the test is left out there.</summary>
    private sealed record PlanLine(string[] Platforms, string Pattern, string Reason);

    /// <summary>Reads the plan: one line per left-out test or class, "platforms pattern reason" (platforms: a
    /// comma-separated list of wine, qemu, native, or all); '#' starts a comment.</summary>
    private static List<PlanLine> ReadPlan(string path)
    {
        var plan = new List<PlanLine>();
        foreach (string raw in File.ReadLines(path))
        {
            string line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            string[] parts = line.Split((char[]?)null, 3, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 3) throw new FormatException($"{path}: \"{line}\" is not \"platforms pattern reason\"");
            plan.Add(new PlanLine(parts[0].Split(','), parts[1], parts[2]));
        }
        return plan;
    }

    private static int Main(string[] argv)
    {
        int passed = 0, failed = 0, skipped = 0;
        var total = Stopwatch.StartNew();
        var args = new List<string>(argv);
        string? platform = Option(args, "--platform");
        string planPath = Option(args, "--plan") ?? Path.Combine(AppContext.BaseDirectory, "emulated-tests.txt");
        List<PlanLine> plan = platform == null ? [] : ReadPlan(planPath)
            .Where(l => l.Platforms.Contains("all") || l.Platforms.Contains(platform)).ToList();
        var skipReasons = new SortedDictionary<string, int>(StringComparer.Ordinal);
        void Skip(string name, string reason)
        {
            skipped++;
            Console.WriteLine($"  Skipped {name}: {reason}");
            // The reason's category, the text before its first colon ("Linux-specific", "emulator", ...).
            string category = reason.Contains(':', StringComparison.Ordinal) ? reason[..reason.IndexOf(':', StringComparison.Ordinal)] : reason;
            skipReasons[category] = skipReasons.GetValueOrDefault(category) + 1;
        }
        if (platform != null) Console.WriteLine($"tests: platform {platform}, {plan.Count} lines of the plan {planPath} apply");
        IEnumerable<Type> types = typeof(Program).Assembly.GetTypes()
            .Where(t => t.IsClass && !t.IsAbstract && t.IsPublic && t.GetMethods().Any(IsTest))
            .Where(t => !args.Any(a => !a.StartsWith('-')) || args.Any(a => !a.StartsWith('-') && t.FullName!.Contains(a, StringComparison.Ordinal)))
            .OrderBy(t => t.FullName, StringComparer.Ordinal);
        foreach (Type type in types)
        {
            foreach (MethodInfo m in type.GetMethods().Where(IsTest).OrderBy(m => m.Name, StringComparer.Ordinal))
            {
                string name = $"{type.FullName}.{m.Name}";
                FactAttribute fact = m.GetCustomAttribute<FactAttribute>()!;
                if (fact.Skip != null) { Skip(name, fact.Skip); continue; }
                string? excluded = args.FirstOrDefault(a => a.StartsWith('-') && name.Contains(a[1..], StringComparison.Ordinal));
                if (excluded != null) { Skip(name, $"left out by {excluded}"); continue; }
                List<object?[]> cases = [];
                if (fact is TheoryAttribute)
                {
                    var inline = m.GetCustomAttributes<InlineDataAttribute>().ToList();
                    if (inline.Count == 0 || m.GetCustomAttributes<Xunit.Sdk.DataAttribute>().Count() != inline.Count)
                    {
                        Skip(name, "runner: a data source other than [InlineData] (this runner runs [InlineData] only)");
                        continue;
                    }
                    foreach (InlineDataAttribute d in inline) cases.AddRange(d.GetData(m));
                }
                else cases.Add([]);
                foreach (object?[] data in cases)
                {
                    string label = data.Length == 0 ? name : $"{name}({string.Join(", ", data)})";
                    // The plan names tests by a part of their label (a theory's case: "Method(True)").
                    PlanLine? planned = plan.FirstOrDefault(l => label.Contains(l.Pattern, StringComparison.Ordinal));
                    if (planned != null) { Skip(label, planned.Reason); continue; }
                    var run = Task.Factory.StartNew(() => Run(type, m, data), TaskCreationOptions.LongRunning);
                    if (!run.Wait(TestTimeout))
                    {
                        // A hung test cannot be stopped: report it and end the process, so that CI does not hang.
                        failed++;
                        Console.WriteLine($"  Failed {label}: still running after {TestTimeout.TotalSeconds:F0} s (hung); the run stops here");
                        Console.WriteLine($"tests: {passed} passed, {failed} failed, {skipped} skipped");
                        Console.Out.Flush();
                        Environment.Exit(1);
                    }
                    (bool? ok, string detail, TimeSpan took) = run.Result;
                    if (ok == null) Skip(label, detail);
                    else if (ok.Value) { passed++; Console.WriteLine($"  Passed {label} [{took.TotalMilliseconds:F0} ms]"); }
                    else { failed++; Console.WriteLine($"  Failed {label} [{took.TotalMilliseconds:F0} ms]\n{detail}"); }
                }
            }
        }
        foreach ((string category, int count) in skipReasons) Console.WriteLine($"tests: skipped, {category}: {count}");
        Console.WriteLine($"tests: done in {total.Elapsed.TotalSeconds:F0} s");
        Console.WriteLine($"tests: {passed} passed, {failed} failed, {skipped} skipped");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>Takes "--name value" out of <paramref name="args"/>: the value, or null when the option is absent.</summary>
    private static string? Option(List<string> args, string name)
    {
        int i = args.IndexOf(name);
        if (i < 0 || i + 1 >= args.Count) return null;
        string value = args[i + 1];
        args.RemoveRange(i, 2);
        return value;
    }

    private static bool IsTest(MethodInfo m) => m.GetCustomAttribute<FactAttribute>() != null;

    private static (bool? ok, string detail, TimeSpan took) Run(Type type, MethodInfo m, object?[] data)
    {
        ConstructorInfo? ctor = type.GetConstructors().OrderBy(c => c.GetParameters().Length).FirstOrDefault();
        if (ctor == null || ctor.GetParameters().Any(p => p.ParameterType != typeof(ITestOutputHelper)))
            return (null, "runner: its class's constructor takes a fixture (this runner passes an ITestOutputHelper only)", default);
        var output = new Output();
        var clock = Stopwatch.StartNew();
        object? instance = null;
        try
        {
            instance = ctor.Invoke(ctor.GetParameters().Length == 0 ? [] : [output]);
            object? result = m.Invoke(instance, data.Length == 0 ? null : data);
            if (result is Task task) task.GetAwaiter().GetResult();
            (instance as IDisposable)?.Dispose();
            return (true, "", clock.Elapsed);
        }
        catch (Exception e)
        {
            Exception inner = e is TargetInvocationException { InnerException: { } ie } ? ie : e;
            (instance as IDisposable)?.Dispose();
            string lines = string.Join("\n", output.Lines.TakeLast(10).Select(l => "    output: " + l));
            return (false, $"    {inner.GetType().Name}: {inner.Message}\n{lines}", clock.Elapsed);
        }
    }
}
