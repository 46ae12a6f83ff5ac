namespace Compaction.Allocator;

/// <summary>Thrown when a call receives a handle that does not name a live block of this heap.</summary>
public sealed class InvalidBlockHandleException : ArgumentException
{
    internal InvalidBlockHandleException(BlockHandle handle, InvalidHandleReason reason)
        : base(Describe(handle, reason), nameof(handle))
    {
        Handle = handle;
        Reason = reason;
    }

    /// <summary>The rejected handle.</summary>
    public BlockHandle Handle { get; }
    /// <summary>Why it was rejected.</summary>
    public InvalidHandleReason Reason { get; }

    private static string Describe(BlockHandle h, InvalidHandleReason r) => r switch
    {
        InvalidHandleReason.Null => "The handle is default(BlockHandle); no heap issues it.",
        InvalidHandleReason.Foreign => $"{h} was issued by another heap.",
        InvalidHandleReason.Forged => $"{h} was never issued by this heap (its index is out of range).",
        _ => $"{h} names a block that was freed (stale handle or double free).",
    };
}
