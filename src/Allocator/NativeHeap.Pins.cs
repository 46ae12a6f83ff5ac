using System.Runtime.CompilerServices;

namespace Compaction.Allocator;

// Pins: the slot pin (PinScope, a few plain loads and stores) and the atomic pin (BlockPin and slot overflow).
// The protocol and why it is safe: native-layout.md, "Pins".
public sealed unsafe partial class NativeHeap
{
    /// <summary>
    /// Pins a block for the length of a scope and exposes its bytes. While the scope lives the block does not move
    /// and cannot be freed by this thread. Use with <c>using</c>:
    /// <code>using (var pin = heap.Pin(h)) pin.Span.Fill(1);</code>
    /// </summary>
    /// <remarks>Lock-free, no interlocked instruction: the pin is published in a per-thread slot (a thread holding
    /// more than 8 scopes at once gets more slots on its first overflow). Pinning an unmovable block works too.</remarks>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PinScope Pin(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        nint* slot = PinRegistry.FreeSlot();
        nint tag = PinRegistry.Tag(e);
        // Dekker with the migrator: store our slot, then load the state. The migrator stores Frozen, issues a
        // process-wide barrier, then loads the slots. One of us sees the other (native-layout.md, "Pins").
        Volatile.Write(ref *slot, tag);
        long s = Volatile.Read(ref e->State);
        if ((s & (EntryState.Allocated | EntryState.Frozen)) != EntryState.Allocated
            || (EntryState.Generation(s) & HandleBits.GenerationMask) != HandleBits.Generation(handle.Value))
        {
            Volatile.Write(ref *slot, 0);
            return PinSlow(handle, e);
        }
        return new PinScope(this, slot, tag, (byte*)e->Address, e->Size);
    }

    /// <summary>The block was frozen by a migration (wait for the copy and retry) or is not live (throw).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private PinScope PinSlow(BlockHandle handle, HandleEntry* e)
    {
        SpinWait spin = default;
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            CheckLive(handle, s);
            if ((s & EntryState.Frozen) == 0) return Pin(handle);
            ThrowIfMigratingOnThisThread(e);
            spin.SpinOnce();
        }
    }

    /// <summary>
    /// Pins a block until the returned object is disposed, from any thread: unlike a <see cref="PinScope"/> it may be
    /// stored in a field, held across <c>await</c> and released on another thread. It costs an interlocked increment
    /// and decrement, and the compactor sees it through the page's pin count before taking any lock.
    /// </summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockPin AcquirePin(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        AcquireAtomicPin(handle, e);
        return new BlockPin(this, handle, e);
    }

    /// <summary>
    /// Raises the entry's atomic pin count (CAS; waits while a migration holds the block frozen), then the pin count
    /// of the block's first page, which is what the compactor's lock-free check reads. The page count is a hint:
    /// it may briefly over-count, never matters for safety (the freeze CAS on the entry decides).
    /// </summary>
    internal void AcquireAtomicPin(BlockHandle handle, HandleEntry* e)
    {
        SpinWait spin = default;
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            CheckLive(handle, s);
            if ((s & EntryState.Frozen) != 0) { ThrowIfMigratingOnThisThread(e); spin.SpinOnce(); continue; }
            if ((s & EntryState.PinMask) == EntryState.PinMask)
                throw new InvalidOperationException($"{handle} already holds the maximum of {EntryState.PinMask} atomic pins.");
            if (Interlocked.CompareExchange(ref e->State, s + 1, s) == s) break;
        }
        Interlocked.Increment(ref Map.Page(Map.PageOf(e->Address)).PinCount);
    }

    /// <summary>Drops one atomic pin. The address is stable until the entry's count falls, so the page is found first.</summary>
    internal void ReleaseAtomicPin(HandleEntry* e)
    {
        if (_disposed) ThrowHelper.Disposed();
        Interlocked.Decrement(ref Map.Page(Map.PageOf(e->Address)).PinCount);
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            if ((s & EntryState.PinMask) == 0)
            {
                Interlocked.Increment(ref Map.Page(Map.PageOf(e->Address)).PinCount);
                ThrowHelper.PinReleased();
            }
            if (Interlocked.CompareExchange(ref e->State, s - 1, s) == s) return;
        }
    }
}

/// <summary>
/// A pinned block for the length of a scope: <see cref="Span"/> and <see cref="Pointer"/> stay valid, and the block
/// stays where it is, until <see cref="Dispose"/>. A ref struct, so it cannot outlive the scope or cross threads.
/// </summary>
public readonly unsafe ref struct PinScope
{
    private readonly NativeHeap? _heap;
    private readonly nint* _slot;
    private readonly nint _tag;
    private readonly byte* _pointer;
    private readonly long _length;

    internal PinScope(NativeHeap heap, nint* slot, nint tag, byte* pointer, long length)
    {
        _heap = heap;
        _slot = slot;
        _tag = tag;
        _pointer = pointer;
        _length = length;
    }

    /// <summary>The block's bytes: exactly its requested size.</summary>
    /// <exception cref="InvalidOperationException">The block is larger than <see cref="int.MaxValue"/> bytes.</exception>
    public Span<byte> Span
    {
        get
        {
            if (_length > int.MaxValue) ThrowHelper.TooLargeForSpan(_length);
            return new Span<byte>(_pointer, (int)_length);
        }
    }

    /// <summary>The block's first byte; valid until <see cref="Dispose"/>.</summary>
    public byte* Pointer => _pointer;

    /// <summary>The block's first byte as an address; valid until <see cref="Dispose"/>.</summary>
    public nint Address => (nint)_pointer;

    /// <summary>The block's size in bytes.</summary>
    public long Length => _length;

    /// <summary>Releases the pin (a plain store). Disposing <c>default(PinScope)</c> does nothing.</summary>
    /// <exception cref="InvalidOperationException">This pin was already released (an unbalanced unpin).</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Dispose()
    {
        if (_slot == null) return;
        // Only the holder of a pin clears its slot; the tag tells a second release from a live pin.
        if (*_slot != _tag) ThrowHelper.PinReleased();
        Volatile.Write(ref *_slot, 0);
        GC.KeepAlive(_heap);
    }
}

/// <summary>
/// A pin that is an object: it may be stored, held across <c>await</c> and released from any thread. Obtained from
/// <see cref="NativeHeap.AcquirePin"/>. Disposing it twice does nothing.
/// </summary>
public sealed unsafe class BlockPin : IDisposable
{
    private readonly NativeHeap _heap;
    private readonly HandleEntry* _entry;
    private readonly byte* _pointer;
    private int _released;

    internal BlockPin(NativeHeap heap, BlockHandle handle, HandleEntry* entry)
    {
        _heap = heap;
        _entry = entry;
        Handle = handle;
        _pointer = (byte*)entry->Address;
        Length = entry->Size;
    }

    /// <summary>The pinned block.</summary>
    public BlockHandle Handle { get; }

    /// <summary>The block's size in bytes.</summary>
    public long Length { get; }

    /// <summary>The block's first byte.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    public nint Address
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _released) != 0, this);
            return (nint)_pointer;
        }
    }

    /// <summary>The block's bytes.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    /// <exception cref="InvalidOperationException">The block is larger than <see cref="int.MaxValue"/> bytes.</exception>
    public Span<byte> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _released) != 0, this);
            if (Length > int.MaxValue) ThrowHelper.TooLargeForSpan(Length);
            return new Span<byte>(_pointer, (int)Length);
        }
    }

    /// <summary>True until the pin is released.</summary>
    public bool IsHeld => Volatile.Read(ref _released) == 0;

    /// <summary>Releases the pin; later calls do nothing.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) _heap.ReleaseAtomicPin(_entry);
    }
}
