using System.Runtime.InteropServices;

namespace Compaction.Allocator.Layout;

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
    /// <summary>Free entries: index of the next free entry. Unused while allocated.</summary>
    public long Link;
}

/// <summary>Bit layout of <see cref="HandleEntry.State"/> (native-layout.md, "State word").</summary>
internal static class EntryState
{
    public const long PinMask = 0xFFFF;           // bits 0-15: atomic pins
    public const long Frozen = 1L << 16;          // a migration owns the block
    public const long Allocated = 1L << 17;
    public const long Movable = 1L << 18;
    public const long Run = 1L << 19;             // backed by a page run (else a slab slot)
    public const long HasOwner = 1L << 20;        // a movable owner registered callbacks for the block
    public const long Retired = 1L << 21;         // the generation ran out: never allocated again (see Freed)
    public const int GenerationShift = 32;        // bits 32-63: generation, bumped on every free

    /// <summary>The last generation an entry is issued with; freeing it retires the entry.</summary>
    public const uint LastGeneration = uint.MaxValue;

    public static uint Generation(long state) => (uint)((ulong)state >> GenerationShift);
    public static long WithGeneration(uint generation) => (long)((ulong)generation << GenerationShift);

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

/// <summary>
/// One slot of the process-wide chunk directory (native-layout.md, "Handle table"): where a chunk of handle entries
/// lives and which heap owns it now. 16 bytes, so both words of a slot share a cache line.
/// </summary>
/// <remarks>
/// <see cref="Entries"/> is written once, before the chunk is first published, and never changes; <see cref="Owner"/>
/// is written (release) when a heap takes or gives back the chunk, and read (acquire) by every handle validation.
/// </remarks>
[StructLayout(LayoutKind.Sequential, Size = 16)]
internal struct HandleChunk
{
    /// <summary>The chunk's first entry (null while the slot is unused).</summary>
    public nint Entries;
    /// <summary>Id of the heap that owns the chunk; 0 while no heap owns it.</summary>
    public long Owner;
}
