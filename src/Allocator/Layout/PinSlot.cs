namespace Compaction.Allocator.Layout;

/// <summary>
/// Layout of a pin record (native-layout.md, "Pins"): two 64-byte cache lines, aligned to their 128-byte pair.
/// Line 0 holds <see cref="SlotsPerRecord"/> slots, each the address of a pinned block's handle entry, or 0 for an
/// empty slot; the migrator's snapshot reads only this line. Line 1 holds one 64-bit sequence per slot: how many pins
/// have taken that slot, bumped by each pin before it publishes its entry, read back by the pin's release to tell its
/// own pin from a later one in the same slot. Only the record's thread writes either line, except that a pin's
/// holder clears its slot.
/// </summary>
internal static unsafe class PinSlot
{
    /// <summary>Slots per record: one 64-byte cache line of pointer-sized slots.</summary>
    public const int SlotsPerRecord = 8;

    /// <summary>Bytes of a record (the slot line and the sequence line); also its alignment.</summary>
    public const int RecordBytes = 2 * 64;

    /// <summary>The sequence word of <paramref name="slot"/>: same index, one line further on.</summary>
    public static long* SequenceOf(nint* slot) => (long*)(slot + SlotsPerRecord);
}
