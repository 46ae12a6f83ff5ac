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
