using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator;

/// <summary>
/// A thread-bound way into a heap for the hottest callers (like mimalloc's explicit heaps): it holds the calling
/// thread's cache of the heap and its pin records, so allocate, free and pin through it pay no thread-local lookup.
/// Obtained with <see cref="NativeHeap.GetThreadContext"/>, once per thread or per request:
/// <code>
/// HeapContext ctx = heap.GetThreadContext();
/// BlockHandle h = ctx.Allocate(64);
/// using (PinScope pin = ctx.Pin(h)) pin.Span.Clear();
/// ctx.Free(h);
/// </code>
/// </summary>
/// <remarks>
/// <para>A ref struct, so it stays on the stack of the thread that made it: it cannot be stored in a field, captured
/// by a lambda or held across <c>await</c>, which is what makes the cache it holds safe to use without the lookup.
/// Every guarantee of the heap's own methods holds: handles are validated on every call, frees race migrations
/// safely, the compactor still disables and drains this thread's cache.</para>
/// <para>The heap's methods and a context's may be mixed freely on the same thread and the same blocks.</para>
/// </remarks>
public readonly unsafe ref struct HeapContext
{
    private readonly NativeHeap _heap;
    private readonly ThreadCache? _cache;   // null when the heap runs without thread caches
    private readonly ThreadPins _pins;

    internal HeapContext(NativeHeap heap, ThreadCache? cache, ThreadPins pins)
    {
        _heap = heap;
        _cache = cache;
        _pins = pins;
    }

    /// <summary>The heap this context enters.</summary>
    /// <exception cref="InvalidOperationException">The context is <c>default</c> (not obtained from a heap).</exception>
    public NativeHeap Heap => _heap ?? ThrowDefault();

    /// <summary>Same as <see cref="NativeHeap.Allocate"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="NativeHeap.MaxBlockSize"/>.</exception>
    /// <exception cref="OutOfMemoryException">The arena has no room for the block.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    /// <exception cref="InvalidOperationException">The context is <c>default</c>.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public BlockHandle Allocate(long size, BlockKind kind = BlockKind.Movable)
    {
        ulong handle = Enter().AllocateCore(size, kind, _cache);
        if (handle == 0) _heap!.ThrowOutOfMemory(size, kind);
        return new BlockHandle(handle);
    }

    /// <summary>Same as <see cref="NativeHeap.TryAllocate"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="NativeHeap.MaxBlockSize"/>.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    /// <exception cref="InvalidOperationException">The context is <c>default</c>.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAllocate(long size, BlockKind kind, out BlockHandle handle)
    {
        handle = new BlockHandle(Enter().AllocateCore(size, kind, _cache));
        return !handle.IsNull;
    }

    /// <summary>Same as <see cref="NativeHeap.Free"/>.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale (includes a double free).</exception>
    /// <exception cref="InvalidOperationException">The block is pinned, or the context is <c>default</c>.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(BlockHandle handle)
    {
        NativeHeap heap = Enter();
        heap.FreeCore(handle, heap.LocateLive(handle), _cache, _pins);
    }

    /// <summary>Same as <see cref="NativeHeap.Pin"/>.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    /// <exception cref="InvalidOperationException">The context is <c>default</c>.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PinScope Pin(BlockHandle handle)
    {
        NativeHeap heap = Enter();
        return heap.PinCore(handle, heap.LocateLive(handle), _pins);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private NativeHeap Enter()
    {
        NativeHeap heap = _heap ?? ThrowDefault();
        heap.ThrowIfDisposed();
        return heap;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static NativeHeap ThrowDefault() =>
        throw new InvalidOperationException("This HeapContext is default; obtain one with NativeHeap.GetThreadContext().");
}
