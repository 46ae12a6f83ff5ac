namespace Compaction.Allocator.Migration;

/// <summary>Outcome of one block migration (the kernel's MIGRATEPAGE_SUCCESS, -EAGAIN and permanent failures).</summary>
internal enum MigrateResult
{
    Success,
    /// <summary>The entry is no longer a live block at that place (freed or moved meanwhile); nothing to do.</summary>
    Gone,
    /// <summary>The block is unmovable: a permanent failure.</summary>
    NotMovable,
    /// <summary>Pinned (atomic pin or a pin slot seen after the freeze): transient, retry later.</summary>
    Pinned,
    /// <summary>Frozen by another migration or changed under us: transient.</summary>
    Busy,
    /// <summary>Its owner answered "try again" or refused to isolate it: transient.</summary>
    OwnerRetry,
    /// <summary>Its owner threw or refused for good: permanent for this run; the block stays intact.</summary>
    OwnerFailed,
    /// <summary>No destination could be allocated.</summary>
    NoMemory,
    /// <summary>A per-thread cache holds a slot of the slab: transient.</summary>
    CacheHeld,
}
