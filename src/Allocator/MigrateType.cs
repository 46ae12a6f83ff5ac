namespace Compaction.Allocator;

/// <summary>Migrate type of a pageblock (the kernel's MIGRATE_UNMOVABLE, MIGRATE_MOVABLE): which kind of block it
/// is meant to hold, so that unmovable blocks do not scatter across the arena.</summary>
public enum MigrateType : byte
{
    /// <summary>Holds unmovable blocks.</summary>
    Unmovable = 0,
    /// <summary>Holds movable blocks.</summary>
    Movable = 1,
}
