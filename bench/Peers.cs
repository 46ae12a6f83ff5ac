using System.Runtime.InteropServices;

namespace Compaction.Bench;

/// <summary>
/// A peer allocator loaded from a shared library: malloc and free as unmanaged function pointers. The plain pointers
/// make the same GC transition as any P/Invoke (like <see cref="NativeMemory.Alloc(nuint)"/>); the
/// <c>NoTransition</c> pair skips it (SuppressGCTransition), to show what the transition costs.
/// </summary>
public sealed unsafe class NativePeer
{
    internal NativePeer(string name, string library, nint module, nint malloc, nint free)
    {
        Name = name;
        Library = library;
        Module = module;
        Malloc = (delegate* unmanaged<nuint, void*>)malloc;
        Free = (delegate* unmanaged<void*, void>)free;
        MallocNoTransition = (delegate* unmanaged[SuppressGCTransition]<nuint, void*>)malloc;
        FreeNoTransition = (delegate* unmanaged[SuppressGCTransition]<void*, void>)free;
    }

    public string Name { get; }
    public string Library { get; }
    public nint Module { get; }
    public delegate* unmanaged<nuint, void*> Malloc { get; }
    public delegate* unmanaged<void*, void> Free { get; }
    public delegate* unmanaged[SuppressGCTransition]<nuint, void*> MallocNoTransition { get; }
    public delegate* unmanaged[SuppressGCTransition]<void*, void> FreeNoTransition { get; }

    /// <summary>One malloc and free through the pointers: proves the library works, not just that it loaded.</summary>
    internal bool SelfTest()
    {
        void* p = Malloc(64);
        if (p == null) return false;
        *(byte*)p = 1;
        Free(p);
        return true;
    }
}

/// <summary>
/// The peer allocators the micro benchmarks compare against, loaded on first use with
/// <see cref="NativeLibrary.Load(string)"/> and <see cref="NativeLibrary.GetExport"/>. glibc is reached through
/// <see cref="NativeMemory"/> and is always there. A peer whose library is missing (or fails to load) is null, and a
/// message saying it is skipped is printed once; nothing throws.
/// </summary>
/// <remarks>Install the peers with <c>scripts/install-peers.sh</c> (Debian: libmimalloc2.0, libtcmalloc-minimal4,
/// libjemalloc2).</remarks>
public static class Peers
{
    /// <summary>Names used as benchmark categories and in the summary table.</summary>
    public const string Glibc = "glibc";
    public const string Mimalloc = "mimalloc";
    public const string Tcmalloc = "tcmalloc";
    public const string Jemalloc = "jemalloc";

    /// <summary>jemalloc uses static TLS: dlopen fails ("cannot allocate memory in static TLS block") unless the
    /// process that loads it started with this tunable. The benchmark job sets it for its child processes.</summary>
    public const string TunablesVariable = "GLIBC_TUNABLES";
    public const string JemallocTunable = "glibc.rtld.optional_static_tls=4096";

    private static readonly Lock s_lock = new();
    private static readonly Dictionary<string, NativePeer?> s_loaded = [];
    private static readonly Dictionary<string, string> s_skipped = [];

    /// <summary>The peers that are libraries (glibc is not one of them), with how to load them.</summary>
    public static readonly (string Name, string Library, string Malloc, string Free, string Package)[] Libraries =
    [
        (Mimalloc, "libmimalloc.so.2", "mi_malloc", "mi_free", "libmimalloc2.0"),
        (Tcmalloc, "libtcmalloc_minimal.so.4", "tc_malloc", "tc_free", "libtcmalloc-minimal4"),
        (Jemalloc, "libjemalloc.so.2", "malloc", "free", "libjemalloc2"),
    ];

    public static NativePeer? MimallocPeer => Get(Mimalloc);
    public static NativePeer? TcmallocPeer => Get(Tcmalloc);
    public static NativePeer? JemallocPeer => Get(Jemalloc);

    /// <summary>Where skip messages go (the console by default; the benchmarks' logger may replace it).</summary>
    public static Action<string> Log { get; set; } = Console.WriteLine;

    /// <summary>True for glibc and for every library peer that loads; false (after printing why) otherwise.</summary>
    public static bool IsAvailable(string name) => name == Glibc || Get(name) != null;

    /// <summary>The value GLIBC_TUNABLES must have for jemalloc to load: the current one plus the static TLS tunable.</summary>
    public static string TunablesWithJemalloc()
    {
        string? current = Environment.GetEnvironmentVariable(TunablesVariable);
        if (string.IsNullOrEmpty(current)) return JemallocTunable;
        return current.Contains("optional_static_tls", StringComparison.Ordinal) ? current : current + ":" + JemallocTunable;
    }

    /// <summary>True when this process started with the tunable jemalloc needs.</summary>
    public static bool HasJemallocTunable =>
        Environment.GetEnvironmentVariable(TunablesVariable)?.Contains("optional_static_tls", StringComparison.Ordinal) == true;

    /// <summary>The peers that could not be loaded so far, with the reason.</summary>
    public static IReadOnlyDictionary<string, string> Skipped
    {
        get { lock (s_lock) return new Dictionary<string, string>(s_skipped); }
    }

    /// <summary>The peer, loaded once; null when it cannot be loaded (the reason is printed once).</summary>
    public static NativePeer? Get(string name)
    {
        lock (s_lock)
        {
            if (s_loaded.TryGetValue(name, out NativePeer? peer)) return peer;
            peer = Load(name, out string? why);
            s_loaded[name] = peer;
            if (peer == null)
            {
                s_skipped[name] = why!;
                Log($"// peer {name} SKIPPED: {why}");
            }
            return peer;
        }
    }

    private static NativePeer? Load(string name, out string? why)
    {
        why = null;
        int i = Array.FindIndex(Libraries, l => l.Name == name);
        if (i < 0) { why = "unknown peer"; return null; }
        (_, string library, string mallocName, string freeName, string package) = Libraries[i];
        nint module;
        try
        {
            module = NativeLibrary.Load(library);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            string detail = LastLine(e.Message);
            why = name == Jemalloc && !HasJemallocTunable
                ? $"{library} did not load; jemalloc needs {TunablesVariable}={JemallocTunable} in the environment of the process that loads it ({detail})"
                : $"{library} did not load (install {package}: scripts/install-peers.sh) ({detail})";
            return null;
        }
        if (!NativeLibrary.TryGetExport(module, mallocName, out nint malloc) || !NativeLibrary.TryGetExport(module, freeName, out nint free))
        {
            why = $"{library} has no {mallocName}/{freeName} export";
            return null;
        }
        var peer = new NativePeer(name, library, module, malloc, free);
        if (!peer.SelfTest())
        {
            why = $"{mallocName}(64) returned null";
            return null;
        }
        return peer;
    }

    private static string LastLine(string s)
    {
        // DllNotFoundException opens with advice and ends with the loader's (dlerror's) words: keep those.
        string line = s.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? s;
        return line.Length > 300 ? line[..300] + "..." : line;
    }

    /// <summary>Prints which peers load in this process (the <c>peers</c> command).</summary>
    public static int PrintReport()
    {
        Console.WriteLine($"{Glibc,-9} available (NativeMemory.Alloc/Free)");
        int missing = 0;
        foreach (var l in Libraries)
        {
            NativePeer? p = Get(l.Name);
            if (p != null) Console.WriteLine($"{l.Name,-9} available ({l.Library}: {l.Malloc}/{l.Free})");
            else missing++;
        }
        Console.WriteLine($"{TunablesVariable}={Environment.GetEnvironmentVariable(TunablesVariable) ?? "(unset)"}");
        return missing;
    }
}
