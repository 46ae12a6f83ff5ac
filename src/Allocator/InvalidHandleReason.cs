namespace Compaction.Allocator;

/// <summary>Why a handle was rejected.</summary>
public enum InvalidHandleReason
{
    /// <summary><c>default(BlockHandle)</c>.</summary>
    Null,
    /// <summary>Issued by another heap.</summary>
    Foreign,
    /// <summary>Its index is outside the handle table: it was never issued.</summary>
    Forged,
    /// <summary>The block it named was freed (a stale handle or a double free).</summary>
    Stale,
}
