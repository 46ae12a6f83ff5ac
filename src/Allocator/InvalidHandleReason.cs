namespace Compaction.Allocator;

/// <summary>Why a handle was rejected. Every reason means the same thing to the caller (the handle names no live block
/// of this heap, and nothing was done); the reason says which check refused it first.</summary>
public enum InvalidHandleReason
{
    /// <summary><c>default(BlockHandle)</c>.</summary>
    Null,
    /// <summary>Its index lies in entries another heap owns (issued by another heap, live or disposed). A handle of a
    /// disposed heap whose entries this heap has since taken over is reported <see cref="Stale"/> instead.</summary>
    Foreign,
    /// <summary>Its index is outside every heap's entries: it was never issued.</summary>
    Forged,
    /// <summary>Its index is one of this heap's entries, but no live block has its generation: the block it named was
    /// freed (a stale handle or a double free), or the value was made up.</summary>
    Stale,
}
