namespace Compaction.Allocator.Pins;

/// <summary>
/// One heap's long-term pin counters (native-layout.md, "Long-term pins"): written with interlocked adds by the
/// long-term pin path and by a long-term pin's release, read racily (each a 64-bit value, never torn) by the
/// statistics and the memory limit's failure reason.
/// </summary>
internal sealed class LongTermPinCounts
{
    /// <summary>Long-term pins held now.</summary>
    public long Held;

    /// <summary>Blocks moved into unmovable memory for a long-term pin.</summary>
    public long Migrations;

    /// <summary>Bytes those moves copied.</summary>
    public long BytesMoved;

    /// <summary>Long-term pin calls refused (no unmovable room, the block held in place, its owner refusing).</summary>
    public long Failures;
}
