namespace Compaction.Allocator;

/// <summary>
/// Settings of a <see cref="NativeHeap"/>. Every property is validated when the heap is created; a bad value raises an
/// <see cref="ArgumentException"/> whose <see cref="ArgumentException.ParamName"/> names the option.
/// </summary>
public sealed class HeapOptions
{
    /// <summary>Bytes of virtual address space to reserve (rounded up to whole pageblocks). Default 1 GiB.
    /// Reserving costs no memory on Linux; memory is committed one pageblock at a time as it is used.</summary>
    public long ArenaBytes { get; set; } = 1L << 30;

    /// <summary>Page size in bytes: a power of two from 4 KiB to 64 KiB. Default 4 KiB.</summary>
    public int PageSize { get; set; } = 4096;

    /// <summary>Pages per pageblock: a power of two from 16 to 1024. Default 512 (2 MiB with 4 KiB pages).</summary>
    public int PageblockPages { get; set; } = 512;

    /// <summary>Share of the arena, in percent, given to the movable zone (like the kernel's movablecore).
    /// The rest is the normal zone, which holds unmovable blocks. From 0 to 100; default 75.</summary>
    public int MovableZonePercent { get; set; } = 75;

    /// <summary>Blocks up to this many bytes live in size-class slabs; larger ones take page runs.
    /// From 1 KiB to 32 KiB; default 16 KiB.</summary>
    public int SlabThreshold { get; set; } = 16 * 1024;

    /// <summary>Advise committed pageblocks as transparent huge pages (MADV_HUGEPAGE). Default true.</summary>
    public bool UseHugePages { get; set; } = true;

    /// <summary>Use the portable back end (NativeMemory) even where mmap is available. Default false.</summary>
    public bool ForcePortableMemory { get; set; }

    /// <summary>Keep per-thread caches of free slots and handles. Default true.</summary>
    public bool PerThreadCaches { get; set; } = true;

    internal HeapOptions Clone() => (HeapOptions)MemberwiseClone();

    internal void Validate()
    {
        if (PageSize < 4096 || PageSize > 65536 || !IsPowerOfTwo(PageSize))
            throw new ArgumentException($"PageSize must be a power of two from 4096 to 65536; it was {PageSize}.", nameof(PageSize));
        if (PageblockPages < 16 || PageblockPages > 1024 || !IsPowerOfTwo(PageblockPages))
            throw new ArgumentException($"PageblockPages must be a power of two from 16 to 1024; it was {PageblockPages}.", nameof(PageblockPages));
        if (MovableZonePercent < 0 || MovableZonePercent > 100)
            throw new ArgumentException($"MovableZonePercent must be from 0 to 100; it was {MovableZonePercent}.", nameof(MovableZonePercent));
        if (SlabThreshold < 1024 || SlabThreshold > 32 * 1024)
            throw new ArgumentException($"SlabThreshold must be from 1024 to 32768; it was {SlabThreshold}.", nameof(SlabThreshold));
        long maxOrderBytes = 2L * PageSize * PageblockPages;
        if (ArenaBytes < maxOrderBytes || ArenaBytes > (1L << 46))
            throw new ArgumentException($"ArenaBytes must be from {maxOrderBytes} (two pageblocks) to 2^46; it was {ArenaBytes}.", nameof(ArenaBytes));
        if ((long)PageSize * PageblockPages > 64L << 20)
            throw new ArgumentException("A pageblock (PageSize * PageblockPages) may be at most 64 MiB.", nameof(PageblockPages));
    }

    private static bool IsPowerOfTwo(int v) => v > 0 && (v & (v - 1)) == 0;
}

/// <summary>Whether the compactor may relocate a block.</summary>
public enum BlockKind
{
    /// <summary>May be relocated by compaction while not pinned; reach its bytes through a pin.
    /// Lives in the movable zone (falling back to movable pageblocks of the normal zone).</summary>
    Movable = 0,
    /// <summary>Never relocated; has a stable address for its whole life. Lives in the normal zone.</summary>
    Unmovable = 1,
}
