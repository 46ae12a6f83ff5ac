using System.Runtime.InteropServices;
using Compaction.Allocator;

namespace Compaction.Bench.Footprint;

/// <summary>
/// One allocator as the <c>footprint</c> workloads see it: a block is a 64-bit id (a pointer for the peers, a
/// <see cref="BlockHandle"/> value for NativeHeap) of a requested size, written with one byte and checked at the end.
/// A child process holds exactly one of these, so no two allocators ever share pages.
/// </summary>
internal abstract class FootprintAllocator : IDisposable
{
    /// <summary>The name used on the command line and in the report (<c>glibc</c>, <c>native-explicit</c>, ...).</summary>
    public abstract string Name { get; }

    /// <summary>Creates what must not be counted before the baseline is taken, or nothing: called after the baseline.</summary>
    public virtual void Start() { }

    public abstract long Allocate(int size);
    public abstract void Write(long id, int size, byte pattern);
    /// <summary>True when the block has its size (where the allocator can tell) and every byte of its pattern.</summary>
    public abstract bool Verify(long id, int size, byte pattern);
    public abstract void Free(long id);

    /// <summary>The peer's own call that gives free memory back (shown in the report), or null when there is none.</summary>
    public virtual string? TrimName => null;

    /// <summary>Runs <see cref="TrimName"/>; false when there is no such call.</summary>
    public virtual bool Trim() => false;

    public virtual void Dispose() { }

    /// <summary>The allocator named <paramref name="name"/>, or null with the reason it cannot run here.</summary>
    public static FootprintAllocator? Create(string name, long arenaBytes, out string? why)
    {
        why = null;
        switch (name)
        {
            case "native-background":
                return new NativeAllocator(name, arenaBytes, background: true);
            case "native-explicit":
                return new NativeAllocator(name, arenaBytes, background: false);
            case Peers.Glibc:
                return new GlibcAllocator();
            case Peers.Mimalloc or Peers.Tcmalloc or Peers.Jemalloc:
                Peers.Log = _ => { };   // the reason is reported through Skipped, in the parent's report
                NativePeer? p = Peers.Get(name);
                if (p == null)
                {
                    why = Peers.Skipped.GetValueOrDefault(name, "did not load");
                    return null;
                }
                return new PeerAllocator(p);
            default:
                why = $"unknown allocator '{name}'";
                return null;
        }
    }

    /// <summary>The allocators, in report order.</summary>
    public static readonly string[] Names = [Peers.Glibc, Peers.Mimalloc, Peers.Jemalloc, Peers.Tcmalloc, "native-explicit", "native-background"];

    /// <summary>True for the two NativeHeap allocators.</summary>
    public static bool IsNative(string name) => name.StartsWith("native-", StringComparison.Ordinal);
}

/// <summary>
/// NativeHeap with movable blocks: <c>native-background</c> calls <see cref="NativeHeap.StartBackgroundCompaction"/>
/// right after creating the heap and nothing else; <c>native-explicit</c> has no background thread, and the child
/// calls <see cref="NativeHeap.Compact"/> + <see cref="NativeHeap.ReleaseFreeMemory"/> after the workload.
/// </summary>
internal sealed class NativeAllocator(string name, long arenaBytes, bool background) : FootprintAllocator
{
    private NativeHeap? _heap;

    public override string Name => name;
    public bool Background => background;
    public long ArenaBytes => arenaBytes;
    public NativeHeap Heap => _heap ?? throw new InvalidOperationException("not started");

    public override void Start()
    {
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = arenaBytes });
        if (background) _heap.StartBackgroundCompaction();
    }

    public override long Allocate(int size) => (long)Heap.Allocate(size).Value;

    public override void Write(long id, int size, byte pattern)
    {
        using PinScope p = Heap.Pin(new BlockHandle((ulong)id));
        p.Span.Fill(pattern);
    }

    public override bool Verify(long id, int size, byte pattern)
    {
        var h = new BlockHandle((ulong)id);
        if (Heap.GetSize(h) != size) return false;
        using PinScope p = Heap.Pin(h);
        return p.Span.Length == size && !p.Span.ContainsAnyExcept(pattern);
    }

    public override void Free(long id) => Heap.Free(new BlockHandle((ulong)id));

    public override void Dispose() => _heap?.Dispose();
}

/// <summary>glibc through <see cref="NativeMemory.Alloc(nuint)"/> / <see cref="NativeMemory.Free"/>; trim is malloc_trim(0).</summary>
internal sealed unsafe class GlibcAllocator : FootprintAllocator
{
    public override string Name => Peers.Glibc;
    public override long Allocate(int size) => (long)NativeMemory.Alloc((nuint)size);
    public override void Write(long id, int size, byte pattern) => new Span<byte>((void*)id, size).Fill(pattern);
    public override bool Verify(long id, int size, byte pattern) => !new ReadOnlySpan<byte>((void*)id, size).ContainsAnyExcept(pattern);
    public override void Free(long id) => NativeMemory.Free((void*)id);
    public override string? TrimName => "malloc_trim(0)";
    public override bool Trim() => Scenarios.ProcessMemory.TrimGlibc();
}

/// <summary>
/// A peer library's malloc/free (<see cref="Peers"/>), with its own trim call when the library exports it:
/// mimalloc mi_collect(true), tcmalloc MallocExtension_ReleaseFreeMemory(), jemalloc
/// mallctl("arena.4096.purge") (4096 = MALLCTL_ARENAS_ALL).
/// </summary>
internal sealed unsafe class PeerAllocator : FootprintAllocator
{
    private readonly NativePeer _peer;
    private readonly nint _trim;

    public PeerAllocator(NativePeer peer)
    {
        _peer = peer;
        string? export = peer.Name switch
        {
            Peers.Mimalloc => "mi_collect",
            Peers.Tcmalloc => "MallocExtension_ReleaseFreeMemory",
            Peers.Jemalloc => "mallctl",
            _ => null,
        };
        if (export != null && NativeLibrary.TryGetExport(peer.Module, export, out nint f)) _trim = f;
    }

    public override string Name => _peer.Name;
    public override long Allocate(int size) => (long)_peer.Malloc((nuint)size);
    public override void Write(long id, int size, byte pattern) => new Span<byte>((void*)id, size).Fill(pattern);
    public override bool Verify(long id, int size, byte pattern) => !new ReadOnlySpan<byte>((void*)id, size).ContainsAnyExcept(pattern);
    public override void Free(long id) => _peer.Free((void*)id);

    public override string? TrimName => _trim == 0 ? null : _peer.Name switch
    {
        Peers.Mimalloc => "mi_collect(true)",
        Peers.Tcmalloc => "MallocExtension_ReleaseFreeMemory()",
        Peers.Jemalloc => "mallctl(\"arena.4096.purge\")",
        _ => null,
    };

    public override bool Trim()
    {
        if (_trim == 0) return false;
        switch (_peer.Name)
        {
            case Peers.Mimalloc:
                ((delegate* unmanaged<byte, void>)_trim)(1);
                return true;
            case Peers.Tcmalloc:
                ((delegate* unmanaged<void>)_trim)();
                return true;
            case Peers.Jemalloc:
                // MALLCTL_ARENAS_ALL is 4096: purge every arena's dirty and muzzy pages.
                fixed (byte* cmd = "arena.4096.purge\0"u8)
                    return ((delegate* unmanaged<byte*, void*, nuint*, void*, nuint, int>)_trim)(cmd, null, null, null, 0) == 0;
            default:
                return false;
        }
    }
}
