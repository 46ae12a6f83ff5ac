namespace Compaction.Allocator.Layout;

/// <summary>
/// Format of a pin slot (native-layout.md, "Pins"): <c>(sequence &lt;&lt; 48) | entryAddress</c> of the pinned
/// block's handle entry, or 0 for an empty slot. Entry addresses must therefore lie below 2^48.
/// </summary>
internal static class PinSlot
{
    public const int SequenceShift = 48;
    public const long AddressMask = (1L << SequenceShift) - 1;
    /// <summary>Slots per record: one 64-byte cache line of pointer-sized slots.</summary>
    public const int SlotsPerRecord = 8;

    public static long EntryOf(long slot) => slot & AddressMask;
}
