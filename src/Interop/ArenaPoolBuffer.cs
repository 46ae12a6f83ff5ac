using System.Buffers;
using System.Runtime.CompilerServices;
using Compaction.Allocator;

namespace Compaction.Interop;

/// <summary>
/// One rent of an <see cref="ArenaMemoryPool"/>: a pinned block exposed as <see cref="Memory{T}"/>; disposing it
/// returns the buffer.
/// </summary>
/// <remarks>
/// State word (<c>_state</c>): the number of outstanding <see cref="MemoryHandle"/>s from <see cref="Pin"/>, plus
/// <see cref="ReturnedBit"/> once the buffer was returned. Pin, Unpin and Dispose change it with a CAS: whichever of
/// Dispose and the last Unpin leaves the word at exactly <see cref="ReturnedBit"/> releases the block (to the pool's
/// cache, or unpinned and freed),
/// so the block is released once, and never while native code may still use a handle to it.
/// </remarks>
internal sealed unsafe class ArenaPoolBuffer : MemoryManager<byte>
{
    private const int ReturnedBit = 1 << 30;

    private readonly ArenaMemoryPool _pool;
    private readonly BlockHandle _handle;
    private readonly BlockPin _pin;
    private readonly byte* _pointer;
    private readonly int _length;
    private int _state;

    public ArenaPoolBuffer(ArenaMemoryPool pool, BlockHandle handle, BlockPin pin)
    {
        _pool = pool;
        _handle = handle;
        _pin = pin;
        _pointer = (byte*)pin.Address;   // pinned (or unmovable and long-term pinned) for the whole rent
        _length = (int)pin.Length;
    }

    public override Memory<byte> Memory
    {
        get
        {
            ThrowIfReturned();
            return CreateMemory(_length);
        }
    }

    public override Span<byte> GetSpan()
    {
        ThrowIfReturned();
        return new Span<byte>(_pointer, _length);
    }

    /// <summary>A handle to the byte at <paramref name="elementIndex"/> (0 to the length, inclusive); the block is
    /// pinned already, so this only counts the handle.</summary>
    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ThrowIfReturned();
        if ((uint)elementIndex > (uint)_length)
            throw new ArgumentOutOfRangeException(nameof(elementIndex), elementIndex, $"The index must be from 0 to {_length}.");
        while (true)
        {
            int s = Volatile.Read(ref _state);
            if ((s & ReturnedBit) != 0) ThrowReturned();
            if (s == ReturnedBit - 1) throw new InvalidOperationException("Too many outstanding pins on this buffer.");
            if (Interlocked.CompareExchange(ref _state, s + 1, s) == s) break;
        }
        return new MemoryHandle(_pointer + elementIndex, default, this);
    }

    public override void Unpin()
    {
        while (true)
        {
            int s = Volatile.Read(ref _state);
            if ((s & ~ReturnedBit) == 0) throw new InvalidOperationException("Unpin was called more often than Pin (an unbalanced unpin).");
            if (Interlocked.CompareExchange(ref _state, s - 1, s) != s) continue;
            if (s - 1 == ReturnedBit) Release();   // returned meanwhile: the last handle releases the block
            return;
        }
    }

    /// <summary>Returns the buffer: unpins and frees its block (after the last outstanding <see cref="MemoryHandle"/>
    /// if native code still holds one).</summary>
    /// <exception cref="InvalidOperationException">The buffer was already returned.</exception>
    protected override void Dispose(bool disposing)
    {
        while (true)
        {
            int s = Volatile.Read(ref _state);
            if ((s & ReturnedBit) != 0) throw new InvalidOperationException("This buffer was already returned to its pool (returned twice).");
            if (Interlocked.CompareExchange(ref _state, s | ReturnedBit, s) != s) continue;
            if (s == 0) Release();
            return;
        }
    }

    /// <summary>Hands the block back to the pool, which keeps it for a later rent (a new buffer object) or unpins and
    /// frees it.</summary>
    private void Release() => _pool.Release(_handle, _pin, _length);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void ThrowIfReturned()
    {
        if ((Volatile.Read(ref _state) & ReturnedBit) != 0) ThrowReturned();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowReturned() => throw new ObjectDisposedException(nameof(ArenaPoolBuffer), "This buffer was returned to its pool.");
}
