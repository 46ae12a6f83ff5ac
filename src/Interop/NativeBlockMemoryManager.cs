using System.Buffers;
using System.Runtime.CompilerServices;
using Compaction.Allocator;

namespace Compaction.Interop;

/// <summary>
/// Exposes one block of a <see cref="NativeHeap"/> as <see cref="Memory{T}"/>, so that its bytes flow into
/// <see cref="Stream"/>, <c>Socket</c>, <see cref="RandomAccess"/> and <c>System.IO.Pipelines</c> without a copy.
/// </summary>
/// <remarks>
/// <para>Where the bytes stay put: an unmovable block never moves, so the manager takes no pin and uses the block's
/// stable address (<see cref="NativeHeap.GetStablePointer"/>). A movable block is pinned with an atomic pin
/// (<see cref="NativeHeap.AcquirePin"/>, a <see cref="BlockPin"/>) for the manager's whole lifetime: the compactor
/// skips it, <see cref="NativeHeap.Free"/> refuses it and <see cref="NativeHeap.Dispose"/> refuses to unmap the
/// arena under it. The pin is the kind that may cross threads and <c>await</c>, which is what asynchronous I/O does
/// with a <see cref="Memory{T}"/>. <see cref="Pin"/> therefore costs one interlocked add and never waits.</para>
/// <para>State word (<c>_state</c>): the number of outstanding <see cref="MemoryHandle"/>s from <see cref="Pin"/>, or
/// <see cref="Disposed"/>. Pin, Unpin and Dispose change it with a CAS, so a Dispose racing with a Pin either sees the
/// pin (and refuses) or makes the Pin throw; it never hands out a pointer to memory it is about to release.</para>
/// <para>An unmovable block holds no pin, so nothing stops its owner from freeing it, or disposing its heap, while
/// this manager lives: keep the block allocated and the heap undisposed for as long as the memory is in use, exactly
/// as for the pointer <see cref="NativeHeap.GetStablePointer"/> returns.</para>
/// </remarks>
public sealed unsafe class NativeBlockMemoryManager : MemoryManager<byte>
{
    private const int Disposed = -1;

    private readonly NativeHeap _heap;
    private readonly BlockPin _pin;   // default when the block is unmovable
    private readonly byte* _pointer;
    private readonly int _length;
    private int _state;   // outstanding Pin() handles, or Disposed

    /// <summary>Wraps block <paramref name="handle"/> of <paramref name="heap"/>; pins it when it is movable.</summary>
    /// <param name="heap">The heap that issued <paramref name="handle"/>.</param>
    /// <param name="handle">A live block of at most <see cref="int.MaxValue"/> bytes.</param>
    /// <param name="ownsBlock">When true, <see cref="IDisposable.Dispose"/> also frees the block (after releasing the
    /// pin); when false (the default) the caller keeps ownership and frees it after disposing this manager.</param>
    /// <exception cref="ArgumentNullException"><paramref name="heap"/> is null.</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The block is larger than <see cref="int.MaxValue"/> bytes, which a
    /// <see cref="Memory{T}"/> cannot cover.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public NativeBlockMemoryManager(NativeHeap heap, BlockHandle handle, bool ownsBlock = false)
    {
        ArgumentNullException.ThrowIfNull(heap);
        // Size first, so that a block too large for a Memory<byte> is refused before anything is acquired.
        long size = heap.GetSize(handle);
        if (size > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(handle), size, "A Memory<byte> covers at most int.MaxValue bytes; this block is larger.");
        _heap = heap;
        Handle = handle;
        OwnsBlock = ownsBlock;
        _length = (int)size;
        if (heap.GetKind(handle) == BlockKind.Unmovable)
        {
            _pointer = (byte*)heap.GetStablePointer(handle);
        }
        else
        {
            _pin = heap.AcquirePin(handle);
            _pointer = (byte*)_pin.Address;
        }
    }

    /// <summary>The block this manager exposes.</summary>
    public BlockHandle Handle { get; }

    /// <summary>The heap that owns the block.</summary>
    public NativeHeap Heap => _heap;

    /// <summary>The block's size in bytes: the length of <see cref="Memory"/> and of <see cref="GetSpan"/>.</summary>
    public int Length => _length;

    /// <summary>True when disposing this manager frees the block.</summary>
    public bool OwnsBlock { get; }

    /// <summary>True once <see cref="IDisposable.Dispose"/> has succeeded.</summary>
    public bool IsDisposed => Volatile.Read(ref _state) == Disposed;

    /// <summary>The block's bytes as <see cref="Memory{T}"/>; valid until this manager is disposed.</summary>
    /// <exception cref="ObjectDisposedException">The manager was disposed.</exception>
    public override Memory<byte> Memory
    {
        get
        {
            ThrowIfDisposed();
            return CreateMemory(_length);
        }
    }

    /// <summary>The block's bytes; valid until this manager is disposed.</summary>
    /// <exception cref="ObjectDisposedException">The manager was disposed.</exception>
    public override Span<byte> GetSpan()
    {
        ThrowIfDisposed();
        return new Span<byte>(_pointer, _length);
    }

    /// <summary>
    /// Returns a handle to the byte at <paramref name="elementIndex"/>. The block is already pinned (or unmovable),
    /// so this only counts the handle: one CAS, no wait. Dispose the handle (which calls <see cref="Unpin"/>) before
    /// disposing the manager.
    /// </summary>
    /// <param name="elementIndex">From 0 to <see cref="Length"/> inclusive (the end is allowed so that an empty slice
    /// at the end of the block can be pinned, as with arrays).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="elementIndex"/> is negative or above <see cref="Length"/>.</exception>
    /// <exception cref="ObjectDisposedException">The manager was disposed.</exception>
    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ThrowIfDisposed();   // first, so that a disposed manager says so whatever the index (the CAS re-checks)
        if ((uint)elementIndex > (uint)_length)
            throw new ArgumentOutOfRangeException(nameof(elementIndex), elementIndex, $"The index must be from 0 to {_length}.");
        while (true)
        {
            int s = Volatile.Read(ref _state);
            if (s == Disposed) ThrowDisposed();
            if (s == int.MaxValue) throw new InvalidOperationException("Too many outstanding pins on this memory.");
            if (Interlocked.CompareExchange(ref _state, s + 1, s) == s) break;
        }
        return new MemoryHandle(_pointer + elementIndex, default, this);
    }

    /// <summary>Releases one handle returned by <see cref="Pin"/>; called by <see cref="MemoryHandle.Dispose"/>.</summary>
    /// <exception cref="ObjectDisposedException">The manager was disposed.</exception>
    /// <exception cref="InvalidOperationException">No handle is outstanding (an unbalanced unpin).</exception>
    public override void Unpin()
    {
        while (true)
        {
            int s = Volatile.Read(ref _state);
            if (s == Disposed) ThrowDisposed();
            if (s == 0) throw new InvalidOperationException("Unpin was called more often than Pin (an unbalanced unpin).");
            if (Interlocked.CompareExchange(ref _state, s - 1, s) == s) return;
        }
    }

    /// <summary>
    /// Releases the pin of a movable block, and frees the block when this manager owns it. Disposing twice does
    /// nothing.
    /// </summary>
    /// <param name="disposing">True when called from <see cref="IDisposable.Dispose"/>. The class has no finalizer,
    /// so it is never false: a manager that is never disposed keeps its block pinned, like a leaked
    /// <see cref="BlockPin"/>, so that native code still using the memory is never handed moved or freed bytes.</param>
    /// <exception cref="InvalidOperationException">Either a <see cref="MemoryHandle"/> from <see cref="Pin"/> is still
    /// outstanding, so native code may still use the bytes: nothing is released; dispose the handles and dispose
    /// again. Or the manager owns the block and another pin (a <see cref="PinScope"/> of the calling thread, or a
    /// <see cref="BlockPin"/>) still holds it, so <see cref="NativeHeap.Free"/> refused it: the manager is disposed
    /// and the block stays allocated for the caller to free.</exception>
    protected override void Dispose(bool disposing)
    {
        int s = Interlocked.CompareExchange(ref _state, Disposed, 0);
        if (s == Disposed) return;
        if (s != 0)
            throw new InvalidOperationException($"{s} handle(s) from Pin() are still outstanding; dispose them before disposing the memory manager.");
        _pin.Dispose();
        if (!OwnsBlock) return;
        try
        {
            _heap.Free(Handle);
        }
        catch (ObjectDisposedException)
        {
            // Only reachable for an unmovable block (a pinned heap cannot be disposed): disposing the heap released
            // every block, this one included, so there is nothing left to free.
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _state) == Disposed) ThrowDisposed();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowDisposed() => throw new ObjectDisposedException(nameof(NativeBlockMemoryManager));
}
