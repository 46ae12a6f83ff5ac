namespace Compaction.Allocator;

/// <summary>Whether the compactor may relocate a block.</summary>
public enum BlockKind
{
    /// <summary>May be relocated by compaction while not pinned; reach its bytes through a pin.
    /// Lives in the movable zone (falling back to movable pageblocks of the normal zone).</summary>
    Movable = 0,
    /// <summary>Never relocated; has a stable address for its whole life. Lives in the normal zone.</summary>
    Unmovable = 1,
}
