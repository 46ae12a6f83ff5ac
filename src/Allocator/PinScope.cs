using System.Runtime.CompilerServices;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator;

/// <summary>
/// A pinned block for the length of a scope: <see cref="Span"/> and <see cref="Pointer"/> stay valid, and the block
/// stays where it is, until <see cref="Dispose"/>. A ref struct, so it cannot outlive the scope or cross threads.
/// </summary>
public readonly unsafe ref struct PinScope
{
    private readonly NativeHeap? _heap;
    private readonly nint* _slot;
    private readonly long _sequence;
    private readonly byte* _pointer;
    private readonly long _length;

    internal PinScope(NativeHeap heap, nint* slot, long sequence, byte* pointer, long length)
    {
        _heap = heap;
        _slot = slot;
        _sequence = sequence;
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
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1720:Identifier contains type name",
        Justification = "A pin's raw address is what native I/O callers ask for; the name is public API since the first release.")]
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
        // Only the holder of a pin clears its slot; the slot's sequence tells a second release from a later pin.
        if (!PinRegistry.Holds(_slot, _sequence)) ThrowHelper.PinReleased();
        Volatile.Write(ref *_slot, 0);
        GC.KeepAlive(_heap);
    }
}
