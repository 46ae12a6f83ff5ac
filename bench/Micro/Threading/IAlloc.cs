using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator;

namespace Compaction.Bench.Micro.Threading;

/// <summary>
/// An allocator as the threaded workloads see it: allocate(size) -> a 64-bit name of the block (a pointer, or a
/// <see cref="BlockHandle"/>'s value), free(name). Each workload is written once as a generic over
/// <c>T : struct, IAlloc</c>: the JIT compiles one copy per struct and inlines these methods into it, so the
/// abstraction costs no interface call; the loop pays what a direct call to the allocator pays.
/// </summary>
public interface IAlloc
{
    /// <summary>A new block of <paramref name="size"/> bytes (contents unspecified).</summary>
    long Allocate(int size);

    /// <summary>Frees a block that <see cref="Allocate"/> returned, from any thread.</summary>
    void Free(long block);
}

/// <summary>NativeHeap, movable blocks: <see cref="NativeHeap.Allocate"/> and <see cref="NativeHeap.Free"/> on the
/// handle's value.</summary>
public readonly struct HeapAlloc(NativeHeap heap) : IAlloc
{
    private readonly NativeHeap _heap = heap;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long Allocate(int size) => (long)_heap.Allocate(size, BlockKind.Movable).Value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(long block) => _heap.Free(new BlockHandle((ulong)block));
}

/// <summary>glibc through <see cref="NativeMemory.Alloc(nuint)"/> and <see cref="NativeMemory.Free"/> (a P/Invoke each).</summary>
public readonly unsafe struct GlibcAlloc : IAlloc
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long Allocate(int size) => (long)NativeMemory.Alloc((nuint)size);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(long block) => NativeMemory.Free((void*)block);
}

/// <summary>A peer library's malloc and free through its unmanaged function pointers (with the GC transition, as the
/// single-threaded rows' plain peer rows).</summary>
public readonly unsafe struct PeerAlloc(NativePeer peer) : IAlloc
{
    private readonly delegate* unmanaged<nuint, void*> _malloc = peer.Malloc;
    private readonly delegate* unmanaged<void*, void> _free = peer.Free;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long Allocate(int size) => (long)_malloc((nuint)size);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(long block) => _free((void*)block);
}
