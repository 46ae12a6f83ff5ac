using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Compaction.Allocator;

namespace Compaction.Bench.Micro;

/// <summary>
/// Allocate-then-free throughput: per invoke, allocate <see cref="Blocks"/> blocks of seeded random sizes (so that
/// many are live at once), then free them in the same order. One operation is one allocate+free pair. Every peer
/// runs the same loop over the same sizes; glibc (NativeMemory) is the baseline. Memory is reused from invoke to
/// invoke, so after BenchmarkDotNet's warmup no allocator should be taking page faults (unless it gives memory back to
/// the OS between batches, which is then part of what it costs).
/// </summary>
[SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "BenchmarkDotNet owns the lifetime: the fields are made in [GlobalSetup] and disposed in " +
                    "[GlobalCleanup]; it never calls Dispose on a benchmark instance (dotnet/BenchmarkDotNet#1409).")]
public abstract unsafe partial class AllocFreeBenchmarks
{
    /// <summary>Blocks live per batch.</summary>
    public const int Blocks = 1000;
    /// <summary>Seed of the sizes: every peer and every run sees the same sequence.</summary>
    public const int Seed = 20251124;

    protected abstract int MinSize { get; }
    protected abstract int MaxSize { get; }
    /// <summary>Address space NativeHeap reserves: room for <see cref="Blocks"/> of <see cref="MaxSize"/> in either zone.</summary>
    protected virtual long ArenaBytes => 256L << 20;

    private int[] _sizes = [];
    private readonly nint[] _pointers = new nint[Blocks];
    private readonly BlockHandle[] _handles = new BlockHandle[Blocks];
    private readonly byte[]?[] _arrays = new byte[Blocks][];
    private NativeHeap _heap = null!;
    private NativeHeap _poisonedHeap = null!;   // HeapOptions.PoisonFreedMemory on: the option's cost
    private NativeHeap _limitedHeap = null!;    // HeapOptions.MemoryLimit set, far above a batch: the limit's cost when it does not bind
    private NativePeer? _mimalloc, _tcmalloc, _jemalloc;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(Seed);
        _sizes = new int[Blocks];
        for (int i = 0; i < Blocks; i++) _sizes[i] = rng.Next(MinSize, MaxSize + 1);
        // The arena is far more than one batch needs (256 MiB up to 64 KiB blocks); commits happen during warmup and are then reused.
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = ArenaBytes });
        _poisonedHeap = new NativeHeap(new HeapOptions { ArenaBytes = ArenaBytes, PoisonFreedMemory = true });
        _limitedHeap = new NativeHeap(new HeapOptions { ArenaBytes = ArenaBytes, MemoryLimit = ArenaBytes / 2 });
        _mimalloc = Peers.MimallocPeer;
        _tcmalloc = Peers.TcmallocPeer;
        _jemalloc = Peers.JemallocPeer;
    }

    /// <summary>For <see cref="GlibcNoTrim"/> only (its own process): glibc stops returning the top of its heap to
    /// the OS after each batch, so the row shows glibc's allocator without the page faults of refilling it.
    /// (Under --smoke, in process, the setting stays for the benchmarks after it; smoke numbers mean nothing.)</summary>
    [GlobalSetup(Target = nameof(GlibcNoTrim))]
    public void SetupNoTrim()
    {
        Setup();
        if (OperatingSystem.IsLinux()) _ = Mallopt(MTrimThreshold, 1 << 30);
    }

    private const int MTrimThreshold = -1;

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int param, int value);

    [GlobalCleanup]
    public void Cleanup()
    {
        _heap.Dispose();
        _poisonedHeap.Dispose();
        _limitedHeap.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap movable")]
    public void NativeHeapMovable() => RunHeap(_heap, BlockKind.Movable);

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap unmovable")]
    public void NativeHeapUnmovable() => RunHeap(_heap, BlockKind.Unmovable);

    /// <summary>The movable row with use-after-free detection on: every free fills the slot with poison, every
    /// allocation reads it back.</summary>
    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap movable, PoisonFreedMemory")]
    public void NativeHeapMovablePoisoned() => RunHeap(_poisonedHeap, BlockKind.Movable);

    /// <summary>The movable row on a heap with a memory limit that a batch never reaches: what keeping a limit costs
    /// an allocation that does not need room made (the limit's work is on the commit path, not the fast path).</summary>
    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap movable, MemoryLimit")]
    public void NativeHeapMovableLimited() => RunHeap(_limitedHeap, BlockKind.Movable);

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap movable, HeapContext")]
    public void NativeHeapMovableContext() => RunContext(BlockKind.Movable);

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap unmovable, HeapContext")]
    public void NativeHeapUnmovableContext() => RunContext(BlockKind.Unmovable);

    /// <summary>The same loop through the thread-bound context: no thread-local lookup per call.</summary>
    private void RunContext(BlockKind kind)
    {
        HeapContext ctx = _heap.GetThreadContext();
        int[] sizes = _sizes;
        BlockHandle[] handles = _handles;
        for (int i = 0; i < sizes.Length; i++) handles[i] = ctx.Allocate(sizes[i], kind);
        for (int i = 0; i < sizes.Length; i++) ctx.Free(handles[i]);
    }

    private void RunHeap(NativeHeap heap, BlockKind kind)
    {
        int[] sizes = _sizes;
        BlockHandle[] handles = _handles;
        for (int i = 0; i < sizes.Length; i++) handles[i] = heap.Allocate(sizes[i], kind);
        for (int i = 0; i < sizes.Length; i++) heap.Free(handles[i]);
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Blocks, Description = "glibc (NativeMemory)")]
    [Peer(Peers.Glibc)]
    public void Glibc()
    {
        int[] sizes = _sizes;
        nint[] p = _pointers;
        for (int i = 0; i < sizes.Length; i++) p[i] = (nint)NativeMemory.Alloc((nuint)sizes[i]);
        for (int i = 0; i < sizes.Length; i++) NativeMemory.Free((void*)p[i]);
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "glibc, M_TRIM_THRESHOLD 1 GiB")]
    [Peer(Peers.Glibc)]
    public void GlibcNoTrim() => Glibc();

    [Benchmark(OperationsPerInvoke = Blocks, Description = "mimalloc")]
    [Peer(Peers.Mimalloc)]
    public void Mimalloc() => RunPeer(_mimalloc!);

    [Benchmark(OperationsPerInvoke = Blocks, Description = "mimalloc (no GC transition)")]
    [Peer(Peers.Mimalloc)]
    public void MimallocNoGcTransition()
    {
        NativePeer peer = _mimalloc!;
        int[] sizes = _sizes;
        nint[] p = _pointers;
        for (int i = 0; i < sizes.Length; i++) p[i] = (nint)peer.MallocNoTransition((nuint)sizes[i]);
        for (int i = 0; i < sizes.Length; i++) peer.FreeNoTransition((void*)p[i]);
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "tcmalloc")]
    [Peer(Peers.Tcmalloc)]
    public void Tcmalloc() => RunPeer(_tcmalloc!);

    [Benchmark(OperationsPerInvoke = Blocks, Description = "jemalloc")]
    [Peer(Peers.Jemalloc)]
    public void Jemalloc() => RunPeer(_jemalloc!);

    private void RunPeer(NativePeer peer)
    {
        delegate* unmanaged<nuint, void*> malloc = peer.Malloc;
        delegate* unmanaged<void*, void> free = peer.Free;
        int[] sizes = _sizes;
        nint[] p = _pointers;
        for (int i = 0; i < sizes.Length; i++) p[i] = (nint)malloc((nuint)sizes[i]);
        for (int i = 0; i < sizes.Length; i++) free((void*)p[i]);
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "ArrayPool<byte>.Shared")]
    public void ArrayPoolShared()
    {
        ArrayPool<byte> pool = ArrayPool<byte>.Shared;
        int[] sizes = _sizes;
        byte[]?[] a = _arrays;
        for (int i = 0; i < sizes.Length; i++) a[i] = pool.Rent(sizes[i]);
        for (int i = 0; i < sizes.Length; i++) { pool.Return(a[i]!); a[i] = null; }
    }
}

/// <summary>Small blocks: seeded sizes 16-256 B, 1000 live per batch.</summary>
public class SmallAllocFree : AllocFreeBenchmarks
{
    protected override int MinSize => 16;
    protected override int MaxSize => 256;
}

/// <summary>Sub-page blocks: seeded sizes 256 B-4 KiB, 1000 live per batch (NativeHeap: the upper slab classes).</summary>
public class SubPageAllocFree : AllocFreeBenchmarks
{
    protected override int MinSize => 256;
    protected override int MaxSize => 4 * 1024;
}

/// <summary>Medium blocks: seeded sizes 4-64 KiB, 1000 live per batch (NativeHeap: slabs up to 16 KiB, page runs above).</summary>
public class MediumAllocFree : AllocFreeBenchmarks
{
    protected override int MinSize => 4 * 1024;
    protected override int MaxSize => 64 * 1024;
}

/// <summary>Large blocks: seeded sizes 64 KiB-1 MiB, 1000 live per batch (~530 MiB; NativeHeap: page runs; glibc:
/// mmap above its threshold). The arena is 4 GiB so that the unmovable zone (a quarter of it) holds a whole batch.</summary>
public class LargeAllocFree : AllocFreeBenchmarks
{
    protected override int MinSize => 64 * 1024;
    protected override int MaxSize => 1024 * 1024;
    protected override long ArenaBytes => 4L << 30;
}
