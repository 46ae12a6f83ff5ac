using Compaction.Allocator.Layout;

namespace Compaction.Allocator;

/// <summary>
/// A pin that may be stored, held across <c>await</c> and released from any thread. Obtained from
/// <see cref="NativeHeap.AcquirePin"/> or <see cref="NativeHeap.PinLongTerm(BlockHandle)"/>. A small struct over a pooled record, so taking a pin allocates nothing; the
/// record's 64-bit generation tells this pin from any later pin that reuses the record, so disposing a pin (or a copy
/// of it) twice does nothing and never releases someone else's pin. <c>default(BlockPin)</c> holds nothing.
/// </summary>
public readonly unsafe struct BlockPin : IDisposable
{
    private readonly BlockPinRecord? _record;
    private readonly long _generation;

    internal BlockPin(BlockPinRecord record, long generation)
    {
        _record = record;
        _generation = generation;
    }

    /// <summary>True until the pin is released (false for <c>default</c>).</summary>
    public bool IsHeld => _record != null && Volatile.Read(ref _record.Generation) == _generation;

    /// <summary>The pinned block.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    public BlockHandle Handle
    {
        get
        {
            BlockPinRecord r = Held();
            var handle = new BlockHandle(Volatile.Read(ref r.HandleValue));
            StillHeld(r);
            return handle;
        }
    }

    /// <summary>The block's size in bytes.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    public long Length
    {
        get
        {
            BlockPinRecord r = Held();
            long length = Volatile.Read(ref r.Length);
            StillHeld(r);
            return length;
        }
    }

    /// <summary>The block's first byte.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    public nint Address
    {
        get
        {
            BlockPinRecord r = Held();
            nint address = Volatile.Read(ref r.Address);
            StillHeld(r);
            return address;
        }
    }

    /// <summary>The block's bytes.</summary>
    /// <exception cref="ObjectDisposedException">The pin was released.</exception>
    /// <exception cref="InvalidOperationException">The block is larger than <see cref="int.MaxValue"/> bytes.</exception>
    public Span<byte> Span
    {
        get
        {
            BlockPinRecord r = Held();
            nint address = Volatile.Read(ref r.Address);
            long length = Volatile.Read(ref r.Length);
            StillHeld(r);
            if (length > int.MaxValue) ThrowHelper.TooLargeForSpan(length);
            return new Span<byte>((void*)address, (int)length);
        }
    }

    /// <summary>Releases the pin; later calls (on this value or any copy of it) do nothing.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (the pin is released all the same).</exception>
    public void Dispose() => _record?.Release(_generation);

    private BlockPinRecord Held()
    {
        BlockPinRecord? r = _record;
        if (r == null || Volatile.Read(ref r.Generation) != _generation) throw new ObjectDisposedException(nameof(BlockPin));
        return r;
    }

    /// <summary>
    /// The getters read the record's fields like a sequence lock's reader: generation, fields, generation again. A
    /// released record is refilled by a later pin (its fields rewritten after the release's generation CAS, a full
    /// fence); the fields are read with acquire, so a field that shows the later pin's value is followed by a
    /// generation read that shows the release, and the getter throws instead of returning another block's address or
    /// length. Two loads more than a plain read, on a weakly ordered CPU too.
    /// </summary>
    private void StillHeld(BlockPinRecord r)
    {
        if (Volatile.Read(ref r.Generation) != _generation) throw new ObjectDisposedException(nameof(BlockPin));
    }
}

/// <summary>
/// The pooled state of a <see cref="BlockPin"/> (native-layout.md, "Pins"): which heap and entry it pins, and a
/// generation bumped at each release. Records live in one process-wide array and are reused through a lock-free
/// stack whose head word carries a 32-bit tag against ABA; they are never freed (the pool grows to the most
/// <see cref="BlockPin"/>s ever held at once).
/// </summary>
internal sealed unsafe class BlockPinRecord
{
    /// <summary>Odd while the record pins a block; each acquire and each release add one, so no two pins of the
    /// record share a value (64 bits: never wraps).</summary>
    public long Generation;
    public NativeHeap? Heap;
    public HandleEntry* Entry;
    // What the pin's getters return; written before Activate (a full fence), read by the getters as a sequence lock's
    // reader (BlockPin.StillHeld).
    public nint Address;
    public long Length;
    public ulong HandleValue;
    /// <summary>A long-term pin (<see cref="NativeHeap.PinLongTerm(BlockHandle)"/>): its release also drops the
    /// heap's count of long-term pins.</summary>
    public bool LongTerm;
    /// <summary>Pool link: index + 1 of the next free record, 0 for none.</summary>
    public int Next;
    public readonly int Index;

    private BlockPinRecord(int index) => Index = index;

    private static readonly Lock s_growLock = new();
    private static BlockPinRecord[] s_records = new BlockPinRecord[64];
    private static int s_count;
    private static long s_free;   // (tag << 32) | (index + 1) of the top free record; 0 = empty

    /// <summary>A free record from the pool (one CAS), or a new one. The caller fills it and calls
    /// <see cref="Activate"/>.</summary>
    public static BlockPinRecord Rent()
    {
        while (true)
        {
            long head = Volatile.Read(ref s_free);
            int top = (int)(uint)head;
            if (top == 0) return Grow();
            BlockPinRecord r = Volatile.Read(ref s_records)[top - 1];
            long next = ((head >> 32) + 1 << 32) | (uint)Volatile.Read(ref r.Next);
            if (Interlocked.CompareExchange(ref s_free, next, head) == head) return r;
        }
    }

    private static BlockPinRecord Grow()
    {
        lock (s_growLock)
        {
            if (s_count == s_records.Length)
            {
                var bigger = new BlockPinRecord[s_records.Length * 2];
                Array.Copy(s_records, bigger, s_count);
                Volatile.Write(ref s_records, bigger);
            }
            var r = new BlockPinRecord(s_count);
            s_records[s_count] = r;
            s_count++;
            return r;
        }
    }

    /// <summary>Puts a record not in use back on the pool (one CAS).</summary>
    private static void Return(BlockPinRecord r)
    {
        while (true)
        {
            long head = Volatile.Read(ref s_free);
            r.Next = (int)(uint)head;
            long next = ((head >> 32) + 1 << 32) | (uint)(r.Index + 1);
            if (Interlocked.CompareExchange(ref s_free, next, head) == head) return;
        }
    }

    /// <summary>Marks the filled record as pinning (its generation becomes odd) and returns the pin's generation.</summary>
    public long Activate() => Interlocked.Increment(ref Generation);

    /// <summary>Releases the pin of <paramref name="generation"/> if it is still held: exactly one of any number of
    /// racing calls wins the generation CAS and drops the atomic pin; the others do nothing.</summary>
    public void Release(long generation)
    {
        if (Interlocked.CompareExchange(ref Generation, generation + 1, generation) != generation) return;
        NativeHeap heap = Heap!;
        HandleEntry* entry = Entry;
        bool longTerm = LongTerm;
        Heap = null;
        Return(this);
        if (longTerm) heap.ReleaseLongTermPin(entry);
        else heap.ReleaseAtomicPin(entry);
    }
}
