using System.Runtime;
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

    /// <summary>The block's id, or 0 when the allocator refused (an error unless <see cref="MayFail"/>).</summary>
    public abstract long Allocate(int size);

    /// <summary>True for an allocator whose refusals are counted rather than fatal (the limit row).</summary>
    public virtual bool MayFail => false;
    public abstract void Write(long id, int size, byte pattern);
    /// <summary>True when the block has its size (where the allocator can tell) and every byte of its pattern.</summary>
    public abstract bool Verify(long id, int size, byte pattern);
    public abstract void Free(long id);

    /// <summary>The peer's own call that gives free memory back (shown in the report), or null when there is none.</summary>
    public virtual string? TrimName => null;

    /// <summary>Runs <see cref="TrimName"/>; false when there is no such call.</summary>
    public virtual bool Trim() => false;

    public virtual void Dispose() { }

    public const string NativeExplicit = "native-explicit", NativeBackground = "native-background", NativeLimit = "native-limit";
    public const string GcWorkstation = "gc-workstation", GcServer = "gc-server";

    /// <summary>The allocator named <paramref name="name"/>, or null with the reason it cannot run here.
    /// <paramref name="capacity"/> bounds the blocks live at once (the managed rows' slot table);
    /// <paramref name="memoryLimit"/> is the limit row's <c>HeapOptions.MemoryLimit</c>.</summary>
    public static FootprintAllocator? Create(string name, long arenaBytes, int capacity, long memoryLimit, out string? why)
    {
        why = null;
        switch (name)
        {
            case NativeBackground:
                return new NativeAllocator(name, arenaBytes, background: true);
            case NativeExplicit:
                return new NativeAllocator(name, arenaBytes, background: false);
            case NativeLimit:
                if (memoryLimit <= 0)
                {
                    why = "no --limit-factor given";
                    return null;
                }
                return new NativeAllocator(name, arenaBytes, background: true, memoryLimit);
            case GcWorkstation or GcServer:
                if (GCSettings.IsServerGC != (name == GcServer))
                {
                    why = $"this process runs the {(GCSettings.IsServerGC ? "server" : "workstation")} GC (DOTNET_gcServer={Environment.GetEnvironmentVariable("DOTNET_gcServer") ?? "unset"})";
                    return null;
                }
                return new ManagedAllocator(name, capacity);
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
    public static readonly string[] Names =
        [Peers.Glibc, Peers.Mimalloc, Peers.Jemalloc, Peers.Tcmalloc, GcWorkstation, GcServer, NativeExplicit, NativeBackground, NativeLimit];

    /// <summary>True for the two NativeHeap allocators.</summary>
    public static bool IsNative(string name) => name.StartsWith("native-", StringComparison.Ordinal);
}

/// <summary>
/// NativeHeap with movable blocks: <c>native-background</c> calls <see cref="NativeHeap.StartBackgroundCompaction"/>
/// right after creating the heap and nothing else; <c>native-explicit</c> has no background thread, and the child
/// calls <see cref="NativeHeap.Compact"/> + <see cref="NativeHeap.ReleaseFreeMemory"/> after the workload;
/// <c>native-limit</c> is native-background with <c>HeapOptions.MemoryLimit</c> = <paramref name="memoryLimit"/>
/// (set through <see cref="FootprintChild.ApplyMemoryLimit"/>), allocating with <see cref="NativeHeap.TryAllocate"/>
/// so that a refusal is counted, not fatal.
/// </summary>
internal sealed class NativeAllocator(string name, long arenaBytes, bool background, long memoryLimit = 0) : FootprintAllocator
{
    private NativeHeap? _heap;

    public override string Name => name;
    public bool Background => background;
    public long ArenaBytes => arenaBytes;
    public long MemoryLimit => memoryLimit;
    public NativeHeap Heap => _heap ?? throw new InvalidOperationException("not started");

    public override bool MayFail => memoryLimit > 0;

    public override void Start()
    {
        var options = new HeapOptions { ArenaBytes = arenaBytes };
        if (memoryLimit > 0) FootprintChild.ApplyMemoryLimit(options, memoryLimit);
        _heap = new NativeHeap(options);
        if (background) _heap.StartBackgroundCompaction();
    }

    public override long Allocate(int size)
    {
        if (memoryLimit == 0) return (long)Heap.Allocate(size).Value;
        return Heap.TryAllocate(size, BlockKind.Movable, out BlockHandle h) ? (long)h.Value : 0;
    }

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

    public override void Dispose()
    {
        _heap?.Dispose();
        base.Dispose();
    }
}

/// <summary>
/// <c>byte[]</c> values on the .NET GC, as a managed cache holds them: a block is a slot of a table of arrays (id = slot
/// + 1), freed by dropping the reference. The table and its free-slot stack are made in the constructor, before the
/// baseline. <c>gc-workstation</c> runs in a child with the default (workstation, concurrent) GC, <c>gc-server</c> in one
/// started with DOTNET_gcServer=1 (server GC, DATAS by default in .NET 10). Its "trim" is a compacting, aggressive
/// full collection (which also compacts the large object heap and gives free regions back).
/// </summary>
internal sealed class ManagedAllocator : FootprintAllocator
{
    private readonly string _name;
    private readonly byte[]?[] _slots;
    private readonly int[] _free;
    private int _freeCount, _next;

    public ManagedAllocator(string name, int capacity)
    {
        _name = name;
        _slots = new byte[]?[capacity];
        _free = new int[capacity];
        Array.Fill(_free, -1);   // write every page now
    }

    public override string Name => _name;

    public override long Allocate(int size)
    {
        int slot = _freeCount > 0 ? _free[--_freeCount] : _next < _slots.Length ? _next++ : -1;
        if (slot < 0) throw new InvalidOperationException($"{_name}: more than {_slots.Length} blocks live");
        _slots[slot] = new byte[size];
        return slot + 1;
    }

    public override void Write(long id, int size, byte pattern) => _slots[id - 1].AsSpan(0, size).Fill(pattern);

    public override bool Verify(long id, int size, byte pattern) =>
        _slots[id - 1] is byte[] b && b.Length == size && !b.AsSpan().ContainsAnyExcept(pattern);

    public override void Free(long id)
    {
        _slots[id - 1] = null;
        _free[_freeCount++] = (int)(id - 1);
    }

    public override string? TrimName => "GC.Collect(Aggressive)";

    public override bool Trim()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return true;
    }
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
