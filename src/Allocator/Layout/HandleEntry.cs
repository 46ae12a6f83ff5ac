using System.Runtime.InteropServices;

namespace Compaction.Allocator.Layout;

/// <summary>
/// The per-block handle-table entry: 16 bytes (four to a cache line), never moved (native-layout.md, "Handle table").
/// </summary>
/// <remarks>
/// The requested size lives in the state word (<see cref="EntryState.SizeLow"/>, with the run's page count in its
/// page descriptor for page runs), so the entry is two words. A free entry on its table's free list keeps the index
/// of the next free entry in <see cref="Address"/>; a free entry bound to storage in a thread cache keeps that
/// storage's address there (native-layout.md, "Per-thread caches").
/// </remarks>
[StructLayout(LayoutKind.Sequential, Size = 16)]
internal struct HandleEntry
{
    /// <summary>Current address of the block; changes only while <see cref="EntryState.Frozen"/> is set. A free entry:
    /// its bound storage (in a cache), or the next free index (on the table's free list).</summary>
    public nint Address;
    /// <summary>The state word: generation, low size bits, flags and atomic pin count (see <see cref="EntryState"/>).</summary>
    public long State;
}

/// <summary>Bit layout of <see cref="HandleEntry.State"/> (native-layout.md, "State word").</summary>
internal static class EntryState
{
    public const long PinMask = 0x3FF;            // bits 0-9: atomic pins (at most 1023 at once)
    public const long Frozen = 1L << 10;          // a migration owns the block
    public const long Allocated = 1L << 11;
    public const long Movable = 1L << 12;
    public const long Run = 1L << 13;             // backed by a page run (else a slab slot)
    public const long HasOwner = 1L << 14;        // a movable owner registered callbacks for the block
    public const long Retired = 1L << 15;         // the generation ran out: never allocated again (see Freed)
    public const int SizeShift = 16;              // bits 16-31: (size - 1) mod 2^16
    public const long SizeMask = 0xFFFFL << SizeShift;
    public const int GenerationShift = 32;        // bits 32-63: generation, bumped on every free
    public const long GenerationMask = unchecked((long)0xFFFF_FFFF_0000_0000UL);
    public const long GenerationOne = 1L << GenerationShift;

    /// <summary>The last generation an entry is issued with; freeing it retires the entry.</summary>
    public const uint LastGeneration = uint.MaxValue;

    public static uint Generation(long state) => (uint)((ulong)state >> GenerationShift);
    public static long WithGeneration(uint generation) => (long)((ulong)generation << GenerationShift);

    /// <summary>The size bits of a block of <paramref name="size"/> bytes: (size - 1) mod 2^16. A slab slot's size
    /// (at most 32 KiB) is exactly <see cref="SlabSize"/>; a run's adds its page count (PageMap.RunSize).</summary>
    public static long WithSize(long size) => ((size - 1) & 0xFFFF) << SizeShift;

    /// <summary>(size - 1) mod 2^16 of the block the state word describes.</summary>
    public static int SizeLow(long state) => (int)((ulong)(state & SizeMask) >> SizeShift);

    /// <summary>The requested size of a slab block (the state word alone says it).</summary>
    public static long SlabSize(long state) => SizeLow(state) + 1;

    /// <summary>
    /// The state word after freeing the block <paramref name="live"/> describes: not allocated, generation + 1, so
    /// every handle of the freed block is stale. An entry whose generation would wrap retires instead (Retired, the
    /// generation kept at <see cref="LastGeneration"/>): a wrapped generation would make a handle issued 2^32 frees
    /// ago bit-identical to a new one. So each (index, generation) pair is issued at most once, ever.
    /// </summary>
    public static long Freed(long live)
    {
        uint g = Generation(live);
        return g == LastGeneration ? Retired | WithGeneration(LastGeneration) : WithGeneration(g + 1);
    }

    public static bool IsRetired(long state) => (state & Retired) != 0;
}

/// <summary>Bit layout of a 64-bit handle (native-layout.md, "Handle"): the entry's index in the process-wide
/// handle table (bits 0-31) and the generation it was issued with (bits 32-63). No heap tag: the chunk that holds the
/// index names the heap that owns it.</summary>
internal static class HandleBits
{
    public const int IndexBits = 32;

    public static ulong Encode(uint generation, uint index) => ((ulong)generation << IndexBits) | index;

    public static uint Index(ulong h) => (uint)h;
    public static uint Generation(ulong h) => (uint)(h >> IndexBits);
}
