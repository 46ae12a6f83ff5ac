namespace Compaction.Allocator.Layout;

/// <summary>
/// The per-pageblock flag bits (like the kernel's NR_PAGEBLOCK_BITS): 4 bits per pageblock, eight pageblocks to a
/// 32-bit word, changed by CAS on the word so that the compactor can set a skip bit without the zone lock
/// (native-layout.md, "Pageblock bitmap").
/// </summary>
internal static class PageblockBits
{
    /// <summary>Bit 0: migrate type (0 unmovable, 1 movable).</summary>
    public const int MigrateTypeBit = 1 << 0;
    /// <summary>Bit 2: the compaction skip bit (a hint: the scanners pass over the pageblock).</summary>
    public const int SkipBit = 1 << 2;
    /// <summary>Bits per pageblock.</summary>
    public const int BitsPerPageblock = 4;
    /// <summary>Pageblocks per 32-bit word.</summary>
    public const int PageblocksPerWord = 32 / BitsPerPageblock;

    public static int WordOf(int pageblock) => pageblock / PageblocksPerWord;
    public static int ShiftOf(int pageblock) => pageblock % PageblocksPerWord * BitsPerPageblock;
}
