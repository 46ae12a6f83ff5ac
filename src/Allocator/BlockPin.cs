using Compaction.Allocator.Layout;

namespace Compaction.Allocator;

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

    internal BlockPin(NativeHeap heap, BlockHandle handle, HandleEntry* entry, long length)
    {
        _heap = heap;
        _entry = entry;
        Handle = handle;
        _pointer = (byte*)entry->Address;
        Length = length;
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
