using System.Reflection;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Tests.LayerRules;

namespace Compaction.Tests
{
    /// <summary>
    /// The core's folders are layers and namespaces, from the OS up to the public API; every reference points down
    /// (see tests/LayerRules/LayerChecker.cs for the rule and the analysis).
    /// </summary>
    public sealed class LayerRuleTests
    {
        private static readonly Assembly Core = typeof(NativeHeap).Assembly;

        /// <summary>The layers of the core, from the bottom up; the root namespace (the API) is above them all.</summary>
        private static readonly LayerMap CoreLayers = new("Compaction.Allocator",
            "Os", "Layout", "Pages", "Slabs", "Handles", "Pins", "Caches", "Migration", "Compaction", "Reclaim", "Diagnostics", "Engine");

        private static readonly Lazy<LayerReport> CoreReport = new(AnalyzeCore);

        /// <summary>The analysis of the core, with the allowlist's Diagnostics entries as shared vocabulary.</summary>
        private static LayerReport AnalyzeCore() =>
            LayerChecker.Analyze(Core.GetTypes(), CoreLayers, VocabularyAllowlist.Select(TypeOfTheCore).Where(t => t.Namespace != CoreLayers.Root));

        /// <summary>The core's type named by a path below the root namespace ("BlockHandle", "Diagnostics.CompactionCounter").</summary>
        private static Type TypeOfTheCore(string path) => Core.GetType($"{CoreLayers.Root}.{path}", throwOnError: true)!;

        [Fact]
        public void NoLayerReferencesAHigherLayer()
        {
            IReadOnlyList<Violation> violations = CoreReport.Value.Violations;
            Assert.True(violations.Count == 0,
                $"{violations.Count} references point up a layer:\n" + string.Join("\n", violations));
        }

        /// <summary>The public types that every layer may name, by their path below the root namespace: leaf types of the
        /// vocabulary — of the root (handles, kinds, the exception and its reason, the owner callbacks, the throw helper)
        /// and two of the public diagnostics that the compactor and the reclaimer speak (the counters' names, the
        /// kernel's fragmentation formulas). Anything else of the root is the API, which no layer below it names, and
        /// anything else of Diagnostics is that layer's; a new entry here is a design decision, made in review, not
        /// inferred.</summary>
        private static readonly string[] VocabularyAllowlist =
        [
            "BlockHandle", "BlockKind", "MigrateType", "InvalidBlockHandleException", "InvalidHandleReason",
            "IMovableBlockOwner", "OwnerMigrateResult", "ThrowHelper",
            "Diagnostics.CompactionCounter", "Diagnostics.Fragmentation",
        ];

        [Fact]
        public void EveryTypeOfTheAllowlistIsALeafOfTheVocabulary()
        {
            // A root entry is vocabulary only when it names no layer and no API type (the checker's fixpoint); a
            // Diagnostics entry sits at the vocabulary's level, so anything it named would be a violation above.
            foreach (Type t in VocabularyAllowlist.Select(TypeOfTheCore).Where(t => t.Namespace == CoreLayers.Root))
                Assert.Contains(t, CoreReport.Value.Vocabulary);
            string[] shared = VocabularyAllowlist.Select(TypeOfTheCore).Where(t => t.Namespace != CoreLayers.Root)
                .SelectMany(t => CoreReport.Value.References.Where(r => r.From == t))
                .Select(r => $"{CoreLayers.Display(r.From)} -> {CoreLayers.Display(r.To)} via {r.Via}").ToArray();
            Assert.True(shared.Length == 0, "allowlisted diagnostics types must be leaves:\n" + string.Join("\n", shared));
        }

        [Fact]
        public void LayersBelowTheApiNameOnlyTheRootTypesOfTheAllowlist()
        {
            string[] offenders = CoreReport.Value.References
                .Where(r => r.From.Namespace != CoreLayers.Root && LayerChecker.Outermost(r.To).Namespace == CoreLayers.Root
                            && !VocabularyAllowlist.Contains(LayerChecker.Outermost(r.To).Name, StringComparer.Ordinal))
                .Select(r => $"{CoreLayers.Display(r.From)} -> {CoreLayers.Display(r.To)} via {r.Via}")
                .Distinct().Order(StringComparer.Ordinal).ToArray();
            Assert.True(offenders.Length == 0,
                $"{offenders.Length} references from a layer below the API to a root type outside the allowlist:\n" + string.Join("\n", offenders));
        }

        [Fact]
        public void NoLayerBelowTheApiReferencesNativeHeap()
        {
            LayerReport report = CoreReport.Value;
            Assert.DoesNotContain(typeof(NativeHeap), report.Vocabulary);
            string[] offenders = report.References
                .Where(r => LayerChecker.Outermost(r.To) == typeof(NativeHeap) && r.From.Namespace != CoreLayers.Root)
                .Select(r => $"{CoreLayers.Display(r.From)} -> {CoreLayers.Display(r.To)} via {r.Via}")
                .Distinct().Order(StringComparer.Ordinal).ToArray();
            Assert.True(offenders.Length == 0,
                $"{offenders.Length} references from a layer below the API to NativeHeap:\n" + string.Join("\n", offenders));
        }

        [Fact]
        public void EveryNamespaceOfTheCoreIsAKnownLayer()
        {
            IReadOnlyList<string> unknown = CoreReport.Value.UnknownNamespaces;
            Assert.True(unknown.Count == 0,
                "namespaces that are not a layer (add them to the layer order):\n" + string.Join("\n", unknown));
        }

        [Fact]
        public void TheCoreDoesNotReferenceTheInterop()
        {
            string[] referenced = Core.GetReferencedAssemblies().Select(a => a.Name ?? "").ToArray();
            Assert.DoesNotContain("Compaction.Interop", referenced);
        }

        /// <summary>The violations planted below, as "from -> to", in ordinal order.</summary>
        private static readonly string[] PlantedViolations =
        [
            "Low.HoldsHigherInALocalOnly -> High.Higher",
            "Low.NewsHigherInALambda -> High.Higher",
            "Low.NewsHigherInIlOnly -> High.Higher",
            "Low.UsesTheApi -> Api",
        ];

        /// <summary>
        /// The same analysis over the deliberately broken types below (root Compaction.Tests.LayerSelfTest = API,
        /// layers Low &lt; High) finds exactly the planted violations, each through the channel it was planted in.
        /// </summary>
        [Fact]
        public void TheCheckerFindsAViolation()
        {
            const string root = "Compaction.Tests.LayerSelfTest";
            var map = new LayerMap(root, "Low", "High");
            Type[] types = typeof(LayerRuleTests).Assembly.GetTypes()
                .Where(t => map.InFamily(LayerChecker.Outermost(t).Namespace)).ToArray();

            LayerReport report = LayerChecker.Analyze(types, map);

            string[] pairs = report.Violations.Select(v => $"{v.From} -> {v.To}").Distinct().Order(StringComparer.Ordinal).ToArray();
            Assert.Equal(PlantedViolations, pairs);

            Assert.Contains(report.Violations, v => v.From == "Low.NewsHigherInIlOnly" && v.Via == "IL of Low.NewsHigherInIlOnly.Make");
            Assert.Contains(report.Violations, v => v.From == "Low.HoldsHigherInALocalOnly" && v.Via == "local of Low.HoldsHigherInALocalOnly.Count");
            Assert.Contains(report.Violations, v => v.From == "Low.NewsHigherInALambda" && v.Via.StartsWith("IL of Low.NewsHigherInALambda+", StringComparison.Ordinal));
            Assert.All(report.Violations, v => Assert.Equal("layer 1, Low", v.FromLayer.ToString()));

            Assert.Contains(typeof(LayerSelfTest.Word), report.Vocabulary);
            Assert.DoesNotContain(typeof(LayerSelfTest.Api), report.Vocabulary);
            Assert.DoesNotContain(typeof(LayerSelfTest.UsesApiWord), report.Vocabulary); // names a non-vocabulary root type
            Assert.Equal(new[] { $"{root}.Stray: Stray.Lost" }, report.UnknownNamespaces);
        }
    }
}

// ---- Deliberate violations for TheCheckerFindsAViolation (layers: Low < High < the root as API) ----------------------

namespace Compaction.Tests.LayerSelfTest
{
    /// <summary>Vocabulary: a leaf, so every layer may name it.</summary>
    internal readonly struct Word
    {
        public int Value { get; init; }
    }

    /// <summary>Not vocabulary: it references the layer High.</summary>
    internal sealed class Api
    {
        internal High.Higher? Inner { get; set; }
    }

    /// <summary>Not vocabulary either: it names Api, which is not vocabulary (the fixpoint).</summary>
    internal static class UsesApiWord
    {
        internal static Api? Current { get; set; }
    }
}

namespace Compaction.Tests.LayerSelfTest.High
{
    internal sealed class Higher
    {
        public int Value { get; set; }
    }
}

namespace Compaction.Tests.LayerSelfTest.Low
{
    /// <summary>Allowed: names vocabulary only.</summary>
    internal static class UsesVocabulary
    {
        public static Word Read() => default;
    }

    /// <summary>Violation visible only in the IL: the signature says object.</summary>
    internal static class NewsHigherInIlOnly
    {
        public static object Make() => new High.Higher();
    }

    /// <summary>Violation visible only as a generic argument of a local's type (no IL token names it).</summary>
    internal static class HoldsHigherInALocalOnly
    {
        public static int Count(int n)
        {
            List<High.Higher>? pending = null;
            int count = 0;
            for (int i = 0; i < n; i++)
                if (pending is null) count++;
            return count;
        }
    }

    /// <summary>Violation inside a lambda: compiled into a nested closure class, attributed to this type.</summary>
    internal static class NewsHigherInALambda
    {
        public static Func<object> Maker() => () => new High.Higher();
    }

    /// <summary>Violation: the API (non-vocabulary root) is above every layer.</summary>
    internal static class UsesTheApi
    {
        public static int Read(Api api) => api.GetHashCode();
    }
}

namespace Compaction.Tests.LayerSelfTest.Stray
{
    /// <summary>A namespace the map does not know.</summary>
    internal static class Lost
    {
    }
}
