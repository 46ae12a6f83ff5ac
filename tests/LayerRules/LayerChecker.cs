// The layer rule: the namespaces of the core are layers in a fixed order from the OS up to the public API (the root
// namespace), and every reference points down or sideways: a type never references a type of a higher layer.
// The root namespace also holds the public vocabulary (leaf types that reference no layer and no non-vocabulary root
// type); it sits below every layer, so any layer may name it, while NativeHeap and the rest of the root are the top.
using System.Reflection;
using System.Reflection.Emit;

namespace Compaction.Tests.LayerRules;

/// <summary>One layer: its name (the namespace tail, or "API" for the root) and its level (1 = lowest).</summary>
public sealed record Layer(string Name, int Level)
{
    public override string ToString() => $"layer {Level}, {Name}";
}

/// <summary>
/// Maps the namespaces of one family (a root namespace and its sub-namespaces) to layers. The sub-namespaces are
/// given from the bottom up; the root is the API, above all of them. A deeper namespace (Root.Os.Linux) belongs to
/// the layer of its first segment (Os). A sub-namespace not in the list is unknown.
/// </summary>
public sealed class LayerMap(string rootNamespace, params string[] layersFromTheBottom)
{
    public string Root { get; } = rootNamespace;
    public Layer Api { get; } = new("API", layersFromTheBottom.Length + 1);
    public static readonly Layer Vocabulary = new("vocabulary", 0);

    public bool InFamily(string? ns) => ns == Root || (ns is not null && ns.StartsWith(Root + ".", StringComparison.Ordinal));

    /// <summary>The layer of a namespace of the family: the API for the root, null for an unknown sub-namespace.</summary>
    public Layer? LayerOf(string ns)
    {
        if (ns == Root) return Api;
        string first = ns[(Root.Length + 1)..].Split('.')[0];
        int index = Array.IndexOf(layersFromTheBottom, first);
        return index < 0 ? null : new Layer(first, index + 1);
    }

    public string Display(Type t)
    {
        string name = (t.FullName ?? t.Name).Split('[')[0];
        if (name.StartsWith(Root + ".", StringComparison.Ordinal)) name = name[(Root.Length + 1)..];
        return System.Text.RegularExpressions.Regex.Replace(name, "`[0-9]+", "<>");
    }
}

/// <summary>A reference from a type (attributed to its outermost type) to a type of the family, and where it occurs.</summary>
public sealed record Reference(Type From, Type To, string Via);

public sealed record Violation(string From, Layer FromLayer, string To, Layer ToLayer, string Via)
{
    public override string ToString() => $"{From} ({FromLayer}) -> {To} ({ToLayer}) via {Via}";
}

/// <summary>What the analysis of a set of types found.</summary>
public sealed class LayerReport
{
    public required IReadOnlyList<Reference> References { get; init; }
    /// <summary>The root types (outermost) that are vocabulary: the greatest set of leaves, computed as a fixpoint.</summary>
    public required IReadOnlySet<Type> Vocabulary { get; init; }
    /// <summary>Sorted, deduplicated.</summary>
    public required IReadOnlyList<Violation> Violations { get; init; }
    /// <summary>"Namespace: Type, Type" for every sub-namespace that is not a layer; sorted.</summary>
    public required IReadOnlyList<string> UnknownNamespaces { get; init; }
}

public static class LayerChecker
{
    private const BindingFlags Declared = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance
                                          | BindingFlags.Static | BindingFlags.DeclaredOnly;

    public static Type Outermost(Type t)
    {
        while (t.DeclaringType is { } outer) t = outer;
        return t;
    }

    /// <param name="types">The types to check (those outside the map's family are ignored).</param>
    /// <param name="map">The layers.</param>
    /// <param name="sharedVocabulary">Types of a layer (not the root) that every layer may name all the same: words the
    /// whole core speaks (the counters' names, the kernel's fragmentation formulas) kept beside the public diagnostics
    /// they belong to. Each sits at the vocabulary's level, so a reference from one of them to any layer is a
    /// violation: they must be leaves.</param>
    public static LayerReport Analyze(IEnumerable<Type> types, LayerMap map, IEnumerable<Type>? sharedVocabulary = null)
    {
        var shared = (sharedVocabulary ?? []).Select(Outermost).ToHashSet();
        Type[] scanned = types.Where(t => map.InFamily(Outermost(t).Namespace)).Distinct().ToArray();
        var references = new List<Reference>();
        foreach (Type t in scanned)
            foreach ((Type to, string via) in ReferencesOf(t, map))
                foreach (Type part in Decompose(to))
                    if (map.InFamily(Outermost(part).Namespace) && Outermost(part) != Outermost(t))
                        references.Add(new Reference(Outermost(t), part, via));

        // Vocabulary: start from the root types that reference no sub-namespace, then drop, until nothing changes,
        // every one that references a root type that is not (or no longer) vocabulary.
        var edges = references.GroupBy(r => r.From).ToDictionary(g => g.Key, g => g.Select(r => Outermost(r.To)).ToHashSet());
        var vocabulary = scanned.Select(Outermost).Where(t => t.Namespace == map.Root)
            .Where(t => !edges.TryGetValue(t, out var to) || to.All(x => x.Namespace == map.Root)).ToHashSet();
        while (vocabulary.RemoveWhere(t => edges.TryGetValue(t, out var to) && to.Any(x => !vocabulary.Contains(x))) > 0) { }

        Layer? EffectiveLayer(Type t)
        {
            string ns = Outermost(t).Namespace!;
            if (shared.Contains(Outermost(t))) return LayerMap.Vocabulary;
            if (ns == map.Root) return vocabulary.Contains(Outermost(t)) ? LayerMap.Vocabulary : map.Api;
            return map.LayerOf(ns);
        }

        var violations = new List<Violation>();
        foreach (Reference r in references)
            if (EffectiveLayer(r.From) is { } from && EffectiveLayer(r.To) is { } to && to.Level > from.Level)
                violations.Add(new Violation(map.Display(r.From), from, map.Display(r.To), to, r.Via));

        var unknown = scanned.Select(Outermost).Distinct()
            .Where(t => t.Namespace != map.Root && map.LayerOf(t.Namespace!) is null)
            .GroupBy(t => t.Namespace!)
            .Select(g => $"{g.Key}: {string.Join(", ", g.Select(map.Display).Order(StringComparer.Ordinal))}")
            .Order(StringComparer.Ordinal).ToList();

        return new LayerReport
        {
            References = references,
            Vocabulary = vocabulary,
            Violations = violations.DistinctBy(v => v.ToString()).OrderBy(v => v.ToString(), StringComparer.Ordinal).ToList(),
            UnknownNamespaces = unknown,
        };
    }

    /// <summary>Generic instantiations, arrays, pointers, byrefs and function pointers down to their parts.</summary>
    public static IEnumerable<Type> Decompose(Type t)
    {
        if (t.IsGenericParameter) yield break; // its constraints are collected where it is declared
        if (t.HasElementType)
        {
            foreach (Type e in Decompose(t.GetElementType()!)) yield return e;
        }
        else if (t.IsFunctionPointer)
        {
            foreach (Type part in t.GetFunctionPointerParameterTypes().Append(t.GetFunctionPointerReturnType()))
                foreach (Type e in Decompose(part)) yield return e;
        }
        else if (t.IsGenericType && !t.IsGenericTypeDefinition)
        {
            yield return t.GetGenericTypeDefinition();
            foreach (Type arg in t.GetGenericArguments())
                foreach (Type e in Decompose(arg)) yield return e;
        }
        else yield return t;
    }

    private static IEnumerable<(Type To, string Via)> ReferencesOf(Type t, LayerMap map)
    {
        string self = map.Display(t);
        if (t.BaseType is { } b) yield return (b, $"base type of {self}");
        foreach (Type i in t.GetInterfaces()) yield return (i, $"interface of {self}");
        foreach (var r in Constraints(t.IsGenericTypeDefinition ? t.GetGenericArguments() : [], self)) yield return r;
        foreach (var a in t.GetCustomAttributesData()) yield return (a.AttributeType, $"attribute of {self}");

        foreach (FieldInfo f in t.GetFields(Declared))
        {
            yield return (f.FieldType, $"field {self}.{f.Name}");
            foreach (var a in f.GetCustomAttributesData()) yield return (a.AttributeType, $"attribute of {self}.{f.Name}");
        }
        foreach (PropertyInfo p in t.GetProperties(Declared))
        {
            yield return (p.PropertyType, $"property {self}.{p.Name}");
            foreach (ParameterInfo ip in p.GetIndexParameters()) yield return (ip.ParameterType, $"indexer {self}.{p.Name}");
        }
        foreach (EventInfo e in t.GetEvents(Declared))
            if (e.EventHandlerType is { } h) yield return (h, $"event {self}.{e.Name}");

        IEnumerable<MethodBase> methods = t.GetMethods(Declared).Cast<MethodBase>().Concat(t.GetConstructors(Declared));
        foreach (MethodBase m in methods)
        {
            string name = $"{self}.{m.Name}";
            if (m is MethodInfo mi) yield return (mi.ReturnType, $"signature of {name}");
            foreach (ParameterInfo p in m.GetParameters()) yield return (p.ParameterType, $"signature of {name}");
            if (m.IsGenericMethodDefinition)
                foreach (var r in Constraints(m.GetGenericArguments(), name)) yield return r;
            foreach (var a in m.GetCustomAttributesData()) yield return (a.AttributeType, $"attribute of {name}");

            if (m.GetMethodBody() is not { } body) continue;
            foreach (LocalVariableInfo local in body.LocalVariables) yield return (local.LocalType, $"local of {name}");
            if (body.GetILAsByteArray() is { } il)
                foreach (Type to in IlReferences(m, il)) yield return (to, $"IL of {name}");
        }
    }

    private static IEnumerable<(Type, string)> Constraints(Type[] genericParameters, string owner)
    {
        foreach (Type g in genericParameters.Where(g => g.IsGenericParameter))
            foreach (Type c in g.GetGenericParameterConstraints())
                yield return (c, $"constraint on {g.Name} of {owner}");
    }

    // ---- IL ----------------------------------------------------------------------------------------------------

    private static readonly OpCode?[] OneByte = new OpCode?[256];
    private static readonly OpCode?[] TwoByte = new OpCode?[256]; // after the 0xFE prefix

    static LayerChecker()
    {
        foreach (FieldInfo f in typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static))
        {
            if (f.GetValue(null) is not OpCode op) continue;
            ushort value = (ushort)op.Value;
            if (op.Size == 1) OneByte[value] = op;
            else TwoByte[value & 0xFF] = op;
        }
    }

    /// <summary>
    /// Every type named by a token in the IL: type tokens (newarr, box, castclass, initobj, sizeof, constrained., ...),
    /// field tokens (declaring type and field type), method tokens (declaring type, return and parameter types) and
    /// ldtoken's member tokens. calli's signature tokens are skipped.
    /// </summary>
    private static IEnumerable<Type> IlReferences(MethodBase method, byte[] il)
    {
        Module module = method.Module;
        Type[]? typeArgs = method.DeclaringType is { IsGenericType: true } d ? d.GetGenericArguments() : null;
        Type[]? methodArgs = method is MethodInfo { IsGenericMethod: true } ? method.GetGenericArguments() : null;
        int pos = 0;
        while (pos < il.Length)
        {
            OpCode op = (il[pos] == 0xFE ? TwoByte[il[++pos]] : OneByte[il[pos]])
                        ?? throw new InvalidOperationException($"unknown IL opcode at {pos} in {method.DeclaringType}.{method.Name}");
            pos++;
            int operand = pos;
            pos += op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, operand),
                _ => 4,
            };
            if (op.OperandType is not (OperandType.InlineType or OperandType.InlineField or OperandType.InlineMethod
                or OperandType.InlineTok)) continue;

            int token = BitConverter.ToInt32(il, operand);
            MemberInfo member = op.OperandType switch
            {
                OperandType.InlineType => module.ResolveType(token, typeArgs, methodArgs),
                OperandType.InlineField => module.ResolveField(token, typeArgs, methodArgs)!,
                OperandType.InlineMethod => module.ResolveMethod(token, typeArgs, methodArgs)!,
                _ => module.ResolveMember(token, typeArgs, methodArgs)!,
            };
            switch (member)
            {
                case Type t:
                    yield return t;
                    break;
                case FieldInfo f:
                    if (f.DeclaringType is { } fd) yield return fd;
                    yield return f.FieldType;
                    break;
                case MethodBase m:
                    if (m.DeclaringType is { } md) yield return md;
                    if (m is MethodInfo mi) yield return mi.ReturnType;
                    foreach (ParameterInfo p in m.GetParameters()) yield return p.ParameterType;
                    if (m is MethodInfo { IsGenericMethod: true } g && !g.IsGenericMethodDefinition)
                        foreach (Type arg in g.GetGenericArguments()) yield return arg;
                    break;
            }
        }
    }
}
