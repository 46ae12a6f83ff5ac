using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Pins;

/// <summary>
/// Per-thread pin slots, the fast half of the asymmetric pin protocol (native-layout.md, "Pins").
/// </summary>
/// <remarks>
/// Each thread that pins owns one record (<see cref="PinSlot"/>): a 64-byte line of <see cref="SlotsPerRecord"/> slots,
/// each the address of a pinned block's handle entry or 0, and a line of per-slot 64-bit sequences. Only the owning
/// thread writes a non-zero value into an empty slot (and bumps the slot's sequence just before); only the holder of
/// that pin clears it (from any thread). A migration, after
/// freezing an entry and issuing <see cref="Interlocked.MemoryBarrierProcessWide"/>, scans every record: a pin whose
/// slot store preceded the barrier is seen here, and a pin that comes after it sees the frozen state.
/// Records are global (not per heap) because a slot names the entry by address, which is unique across heaps.
/// A record is recycled when its thread dies with every slot empty (its sequences go on counting up, never reset); a
/// record with pins still in it is kept, so leaked pins go on protecting their blocks.
/// </remarks>
internal static unsafe class PinRegistry
{
    public const int SlotsPerRecord = PinSlot.SlotsPerRecord;

    private static readonly Lock s_lock = new();
    private static nint[] s_records = new nint[64];
    private static int s_count;
    private static readonly Stack<nint> s_free = new();
    private static nint s_chunk;       // records not yet handed out: [s_chunk, s_chunkEnd), guarded by s_lock
    private static nint s_chunkEnd;
    private const int ChunkBytes = 64 * PinSlot.RecordBytes;

    /// <summary>The OS layer new record chunks are mapped through (the real one; fault-injection tests swap in one
    /// that refuses, so a refused record is tested like any other refused metadata).</summary>
    internal static IOsMemory Os { get; set; } = OsMemory.Default;

    [ThreadStatic] private static ThreadPins? t_pins;

    /// <summary>The calling thread's pin records, registering the first on first use (one thread-local read).
    /// Callers that already hold the thread's <see cref="ThreadPins"/> (a thread cache, a heap context) skip it.</summary>
    public static ThreadPins Current
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => t_pins ?? Register();
    }

    /// <summary>
    /// Takes the empty <paramref name="slot"/> of the calling thread for <paramref name="entry"/>: bumps the slot's
    /// sequence, then publishes the entry's address (a release store, so a holder that sees the entry sees the new
    /// sequence too). Returns the pin's sequence, which no later pin of that slot gets again (for 2^64 pins), so that
    /// releasing a pin twice (an unbalanced unpin) is detected instead of clearing someone else's pin.
    /// </summary>
    /// <remarks>Plain loads and stores only: the record's sequence line is written by its thread alone.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Publish(nint* slot, HandleEntry* entry)
    {
        long* sequence = PinSlot.SequenceOf(slot);
        long pin = *sequence + 1;
        *sequence = pin;
        Volatile.Write(ref *slot, (nint)entry);
        return pin;
    }

    /// <summary>True when <paramref name="slot"/> still holds the pin that got <paramref name="sequence"/>: occupied,
    /// and no pin has taken the slot since (each would have bumped its sequence before publishing).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Holds(nint* slot, long sequence) =>
        Volatile.Read(ref *slot) != 0 && *PinSlot.SequenceOf(slot) == sequence;

    /// <summary>An empty slot of <paramref name="pins"/>' thread (the caller's): in its first record on the fast path,
    /// else in an overflow record (registered on demand, kept for the thread's life), so that every pin is a slot pin.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static nint* FreeSlot(ThreadPins pins)
    {
        nint* slots = pins.Slots;
        for (int i = 0; i < SlotsPerRecord; i++)
            if (slots[i] == 0) return &slots[i];
        return FreeOverflowSlot(pins);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static nint* FreeOverflowSlot(ThreadPins pins)
    {
        List<nint> overflow = pins.Overflow ??= [];
        foreach (nint r in overflow)
        {
            nint* slots = (nint*)r;
            for (int i = 0; i < SlotsPerRecord; i++)
                if (slots[i] == 0) return &slots[i];
        }
        nint record = NewRecord();
        overflow.Add(record);
        return (nint*)record;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ThreadPins Register() => t_pins = new ThreadPins(NewRecord());

    private static nint NewRecord()
    {
        nint record;
        lock (s_lock)
        {
            if (s_free.Count > 0)
            {
                record = s_free.Pop();
            }
            else
            {
                if (s_chunk == s_chunkEnd)
                {
                    // Records come in zeroed chunks of 64 from the OS layer (MetadataMemory), aligned to their own size
                    // (the chunk's start is rounded up); records are never freed (a dead thread's is reused), nor are chunks.
                    // A refusal throws OutOfMemoryException here, before anything changed.
                    nint chunk = (nint)MetadataMemory.AllocateZeroed(ChunkBytes + PinSlot.RecordBytes, Os);
                    s_chunk = (chunk + PinSlot.RecordBytes - 1) & ~(nint)(PinSlot.RecordBytes - 1);
                    s_chunkEnd = s_chunk + ChunkBytes;
                }
                if (s_count == s_records.Length)
                {
                    var bigger = new nint[s_records.Length * 2];
                    Array.Copy(s_records, bigger, s_count);
                    Volatile.Write(ref s_records, bigger);
                }
                record = s_chunk;
                s_chunk += PinSlot.RecordBytes;
                s_records[s_count] = record;
                Volatile.Write(ref s_count, s_count + 1);
            }
        }
        return record;
    }

    /// <summary>Collects the entry addresses of every occupied pin slot into <paramref name="pinned"/> (cleared
    /// first). After a freeze and a process-wide barrier this is exact for the frozen entries; otherwise a hint.</summary>
    public static void Snapshot(HashSet<long> pinned)
    {
        pinned.Clear();
        nint[] records = Volatile.Read(ref s_records);
        int n = Math.Min(Volatile.Read(ref s_count), records.Length);
        for (int r = 0; r < n; r++)
        {
            nint* slots = (nint*)records[r];
            for (int s = 0; s < SlotsPerRecord; s++)
            {
                long v = Volatile.Read(ref slots[s]);
                if (v != 0) pinned.Add(v);
            }
        }
    }

    /// <summary>True when the thread of <paramref name="pins"/> (the caller) holds a slot pin on <paramref name="entry"/>.
    /// No barrier needed: the slots hold the thread's own stores (a slot pin is released only by its holder, a ref
    /// struct on this thread). Two vector compares of the first record's line, then the overflow records if any.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsPinnedBy(ThreadPins pins, HandleEntry* entry)
    {
        long* slots = (long*)pins.Slots;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<long> e = Vector256.Create((long)entry);
            if ((Vector256.Equals(Vector256.Load(slots), e) | Vector256.Equals(Vector256.Load(slots + 4), e)) != Vector256<long>.Zero)
                return true;
        }
        else if (RecordHolds((nint)slots, entry))
        {
            return true;
        }
        return pins.Overflow != null && OverflowHolds(pins, entry);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool OverflowHolds(ThreadPins pins, HandleEntry* entry)
    {
        foreach (nint r in pins.Overflow!)
            if (RecordHolds(r, entry)) return true;
        return false;
    }

    private static bool RecordHolds(nint record, HandleEntry* entry)
    {
        nint* slots = (nint*)record;
        for (int s = 0; s < SlotsPerRecord; s++)
            if (slots[s] == (nint)entry) return true;
        return false;
    }

    /// <summary>Counts slot pins whose entry satisfies <paramref name="owned"/> (racy; for Dispose and statistics).</summary>
    public static int CountPins(Func<nint, bool> owned)
    {
        nint[] records = Volatile.Read(ref s_records);
        int n = Math.Min(Volatile.Read(ref s_count), records.Length), pins = 0;
        for (int r = 0; r < n; r++)
        {
            nint* slots = (nint*)records[r];
            for (int s = 0; s < SlotsPerRecord; s++)
            {
                nint v = Volatile.Read(ref slots[s]);
                if (v != 0 && owned(v)) pins++;
            }
        }
        return pins;
    }

    /// <summary>Returns a dead thread's record to the pool when it holds no pin (called by
    /// <see cref="ThreadPins"/>' finalizer); a record with pins left in it is kept, so leaked pins go on protecting
    /// their blocks.</summary>
    internal static void Recycle(nint r)
    {
        nint* slots = (nint*)r;
        for (int s = 0; s < SlotsPerRecord; s++)
            if (Volatile.Read(ref slots[s]) != 0) return;
        lock (s_lock) s_free.Push(r);
    }
}
