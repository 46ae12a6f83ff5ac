using System.Diagnostics;
using System.Reflection;
using Xunit.Abstractions;

namespace Compaction.Tests.Runner;

/// <summary>
/// Runs the [Fact]s and [InlineData] [Theory]s of the test classes compiled into this assembly, one at a time, in
/// the test project's own code (tests/), under an emulator: each test class is constructed per test (its constructor
/// may take an <see cref="ITestOutputHelper"/>), disposed after. What it cannot run as xunit would (other constructor
/// parameters, [MemberData] and other data sources, skipped facts) it reports as skipped, with the reason.
/// Arguments: class-name filters (a test runs when its class's full name contains one of them; none: all), and
/// exclusions, "-Name" (a test whose full name, class and method, contains Name is left out and counted skipped).
/// Closes with "tests: N passed, N failed, N skipped"; exit 1 on any failure.
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

    private static int Main(string[] args)
    {
        int passed = 0, failed = 0, skipped = 0;
        var total = Stopwatch.StartNew();
        IEnumerable<Type> types = typeof(Program).Assembly.GetTypes()
            .Where(t => t.IsClass && !t.IsAbstract && t.IsPublic && t.GetMethods().Any(IsTest))
            .Where(t => !args.Any(a => !a.StartsWith('-')) || args.Any(a => !a.StartsWith('-') && t.FullName!.Contains(a, StringComparison.Ordinal)))
            .OrderBy(t => t.FullName, StringComparer.Ordinal);
        foreach (Type type in types)
        {
            foreach (MethodInfo m in type.GetMethods().Where(IsTest).OrderBy(m => m.Name, StringComparer.Ordinal))
            {
                string name = $"{type.FullName}.{m.Name}";
                string? excluded = args.FirstOrDefault(a => a.StartsWith('-') && name.Contains(a[1..], StringComparison.Ordinal));
                if (excluded != null) { skipped++; Console.WriteLine($"  Skipped {name}: left out by {excluded}"); continue; }
                FactAttribute fact = m.GetCustomAttribute<FactAttribute>()!;
                if (fact.Skip != null) { skipped++; Console.WriteLine($"  Skipped {name}: {fact.Skip}"); continue; }
                List<object?[]> cases = [];
                if (fact is TheoryAttribute)
                {
                    var inline = m.GetCustomAttributes<InlineDataAttribute>().ToList();
                    if (inline.Count == 0 || m.GetCustomAttributes<Xunit.Sdk.DataAttribute>().Count() != inline.Count)
                    {
                        skipped++;
                        Console.WriteLine($"  Skipped {name}: a data source other than [InlineData] (this runner runs [InlineData] only)");
                        continue;
                    }
                    foreach (InlineDataAttribute d in inline) cases.AddRange(d.GetData(m));
                }
                else cases.Add([]);
                foreach (object?[] data in cases)
                {
                    string label = data.Length == 0 ? name : $"{name}({string.Join(", ", data)})";
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
                    if (ok == null) { skipped++; Console.WriteLine($"  Skipped {label}: {detail}"); }
                    else if (ok.Value) { passed++; Console.WriteLine($"  Passed {label} [{took.TotalMilliseconds:F0} ms]"); }
                    else { failed++; Console.WriteLine($"  Failed {label} [{took.TotalMilliseconds:F0} ms]\n{detail}"); }
                }
            }
        }
        Console.WriteLine($"tests: done in {total.Elapsed.TotalSeconds:F0} s");
        Console.WriteLine($"tests: {passed} passed, {failed} failed, {skipped} skipped");
        return failed == 0 ? 0 : 1;
    }

    private static bool IsTest(MethodInfo m) => m.GetCustomAttribute<FactAttribute>() != null;

    private static (bool? ok, string detail, TimeSpan took) Run(Type type, MethodInfo m, object?[] data)
    {
        ConstructorInfo? ctor = type.GetConstructors().OrderBy(c => c.GetParameters().Length).FirstOrDefault();
        if (ctor == null || ctor.GetParameters().Any(p => p.ParameterType != typeof(ITestOutputHelper)))
            return (null, "its class's constructor takes a fixture (this runner passes an ITestOutputHelper only)", default);
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
