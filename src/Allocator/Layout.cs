using System.Runtime.InteropServices;

namespace Compaction.Allocator;

// All native layouts of the core live in this file; native-layout.md draws them.

/// <summary>What a page currently is. See native-layout.md, "Page descriptor".</summary>
internal enum PageKind : byte
{
    /// <summary>Inside a free buddy block, not its first page.</summary>
    FreeTail = 0,
    /// <summary>First page of a free buddy block; <see cref="PageDescriptor.Order"/> is valid and the page is on a free list.</summary>
    FreeHead = 1,
    /// <summary>First page of a page run holding one large block; <see cref="PageDescriptor.Aux"/> is its handle index.</summary>
    RunHead = 2,
    /// <summary>First page of a slab; class, counts, free-slot list and fullness links are valid.</summary>
    SlabHead = 3,
    /// <summary>A later page of a run or slab; <see cref="PageDescriptor.Aux"/> is the index of its head page.</summary>
    Tail = 4,
}

/// <summary>Migrate type of a pageblock (the kernel's MIGRATE_UNMOVABLE, MIGRATE_MOVABLE): which kind of block it
/// is meant to hold, so that unmovable blocks do not scatter across the arena.</summary>
public enum MigrateType : byte
{
    /// <summary>Holds unmovable blocks.</summary>
    Unmovable = 0,
    /// <summary>Holds movable blocks.</summary>
    Movable = 1,
}

/// <summary>
/// The per-page descriptor, the analogue of the kernel's struct page: 32 bytes per page (0.78% of a 4 KiB page).
/// </summary>
/// <remarks>
/// Protected by the zone lock for buddy fields (Kind of free pages, Order, Next/Prev of free blocks) and by the size
/// class lock for slab fields (RefCount, FreeSlot, Bump, fullness links). <see cref="PinCount"/> is atomic and read
/// without any lock by the compactor's cheap check (native-layout.md, "Pins").
/// Invariant for a slab head: RefCount == slots handed out (to handles or to per-thread caches) and
/// RefCount + |free-slot list| + (capacity - Bump) == capacity.
/// </remarks>
[StructLayout(LayoutKind.Sequential, Size = 32)]
internal struct PageDescriptor
{
    public PageKind Kind;
    /// <summary>Buddy order of a free head; order of a run's backing allocation is not kept (runs are exact).</summary>
    public byte Order;
    /// <summary>Migrate type the page was allocated as (counts "compatible" pages when claiming a pageblock).</summary>
    public MigrateType AllocType;
    public byte Flags;
    /// <summary>Slab head: size-class index (bit 15: the slab's BlockKind).</summary>
    public ushort SizeClass;
    /// <summary>Slab head: slots carved so far (slots at or beyond Bump were never handed out).</summary>
    public ushort Bump;
    /// <summary>Slab head: slots handed out. Run head: 1.</summary>
    public int RefCount;
    /// <summary>Atomic pins (long-lived and overflow pins) on blocks whose first page this is.</summary>
    public int PinCount;
    /// <summary>Free list (free head) or fullness list (slab head) link, page index; -1 for none.</summary>
    public int Next;
    public int Prev;
    /// <summary>Run head: handle index. Slab head: first free slot (-1 none). Tail: head page index.</summary>
    public int Aux;
    /// <summary>Run head: pages in the run. Slab head: fullness group.</summary>
    public int Aux2;
}

/// <summary>
/// The per-block handle-table entry: 32 bytes, never moved (native-layout.md, "Handle table").
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = 32)]
internal struct HandleEntry
{
    /// <summary>Current address of the block; changes only while <see cref="EntryState.Frozen"/> is set.</summary>
    public nint Address;
    /// <summary>The state word: generation, flags and atomic pin count (see <see cref="EntryState"/>).</summary>
    public long State;
    /// <summary>Requested size in bytes; immutable while allocated.</summary>
    public long Size;
    /// <summary>Free entries: index of the next free entry. Allocated: reserved for owners.</summary>
    public long Link;
}

/// <summary>Bit layout of <see cref="HandleEntry.State"/>.</summary>
internal static class EntryState
{
    public const long PinMask = 0xFFFF;           // bits 0-15: atomic pins
    public const long Frozen = 1L << 16;          // a migration owns the block
    public const long Allocated = 1L << 17;
    public const long Movable = 1L << 18;
    public const long Run = 1L << 19;             // backed by a page run (else a slab slot)
    public const long HasOwner = 1L << 20;        // a movable owner registered callbacks for the block
    public const int GenerationShift = 32;        // bits 32-63: generation, bumped on every free

    public static uint Generation(long state) => (uint)((ulong)state >> GenerationShift);
    public static long WithGeneration(uint generation) => (long)((ulong)generation << GenerationShift);
}

/// <summary>Bit layout of a 64-bit handle (native-layout.md, "Handle").</summary>
internal static class HandleBits
{
    public const int IndexBits = 32;
    public const int GenerationBits = 24;
    public const uint GenerationMask = (1u << GenerationBits) - 1;
    public const int TagShift = IndexBits + GenerationBits;

    public static ulong Encode(byte heapTag, uint generation, uint index)
        => ((ulong)heapTag << TagShift) | ((ulong)(generation & GenerationMask) << IndexBits) | index;

    public static uint Index(ulong h) => (uint)h;
    public static uint Generation(ulong h) => (uint)(h >> IndexBits) & GenerationMask;
    public static byte Tag(ulong h) => (byte)(h >> TagShift);
}
