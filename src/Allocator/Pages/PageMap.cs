using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Numerics;
using System.Runtime.InteropServices;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Pages;

/// <summary>
/// Geometry of the arena and its native metadata: the page-descriptor array and the pageblock flag bitmap.
/// </summary>
/// <remarks>
/// Page indices are absolute within the arena; the arena base is pageblock-aligned and zones start on
/// max-order boundaries, so the buddy of page <c>p</c> at order <c>o</c> is simply <c>p ^ (1 &lt;&lt; o)</c>.
/// The pageblock bitmap's layout is <see cref="PageblockBits"/>. Bits are changed with a CAS on the containing
/// 32-bit word, so the compactor can set skip bits without the zone lock; readers load the word without a lock
/// (a skip bit is a hint, and the migrate type changes only under the zone lock, which its users hold).
/// </remarks>
internal sealed unsafe class PageMap : IDisposable
{
    public readonly nint Base;
    public readonly int PageShift;
    public readonly int PageSize;
    public readonly int PageCount;
    public readonly int PageblockOrder;     // log2(pages per pageblock)
    public readonly int PageblockPages;
    public readonly int PageblockCount;
    public readonly int MaxOrder;           // PageblockOrder + 1: the largest buddy order
    public PageDescriptor* Pages;
    private int* _pageblockBits;
    private nuint _pageblockBitsBytes;
    private readonly IOsMemory _os;   // maps and unmaps the descriptor array and the pageblock bits

    /// <exception cref="OutOfMemoryException">The OS refused the descriptor array; nothing is left mapped.</exception>
    public PageMap(nint baseAddress, int pageSize, int pageblockPages, int pageCount, IOsMemory os)
    {
        _os = os;
        Base = baseAddress;
        PageSize = pageSize;
        PageShift = BitOperations.Log2((uint)pageSize);
        PageblockPages = pageblockPages;
        PageblockOrder = BitOperations.Log2((uint)pageblockPages);
        MaxOrder = PageblockOrder + 1;
        PageCount = pageCount;
        PageblockCount = pageCount / pageblockPages;
        // Zeroed lazily and never charged up front (MetadataMemory): untouched descriptors cost no page fault and no
        // commit. All-zero is a valid descriptor (a FreeTail page); the zones write descriptors only below their
        // frontiers, so the resident part of the array follows the pages the heap has used (native-layout.md, 2).
        Pages = (PageDescriptor*)MetadataMemory.AllocateZeroed(DescriptorArrayBytes, os);
        int words = (PageblockCount + PageblockBits.PageblocksPerWord - 1) / PageblockBits.PageblocksPerWord;
        try
        {
            _pageblockBitsBytes = (nuint)words * sizeof(int);
            _pageblockBits = (int*)MetadataMemory.AllocateZeroed(_pageblockBitsBytes, os);
        }
        catch
        {
            Dispose();   // a constructor that throws leaves nothing behind: the heap never sees this map
            throw;
        }
    }

    private nuint DescriptorArrayBytes => (nuint)PageCount * (nuint)sizeof(PageDescriptor);

    /// <summary>Bytes of the pageblock bitmap (4 bits per pageblock of the whole arena: 256 KiB per TiB reserved).
    /// The descriptor array's bytes in use depend on the zones' frontiers (<see cref="PageAllocator.MetadataBytes"/>).</summary>
    public long PageblockBitmapBytes => (long)(PageblockCount + PageblockBits.PageblocksPerWord - 1) / PageblockBits.PageblocksPerWord * sizeof(int);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref PageDescriptor Page(int index)
    {
        Debug.Assert((uint)index < (uint)PageCount);
        return ref Pages[index];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int PageOf(nint address) => (int)((nuint)(address - Base) >> PageShift);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public nint AddressOf(int page) => Base + (nint)((nuint)(uint)page << PageShift);

    /// <summary>Head page of the run or slab that contains <paramref name="page"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int HeadOf(int page) => Pages[page].Kind == PageKind.Tail ? Pages[page].TailHead : page;

    public int PageblockOf(int page) => page >> PageblockOrder;

    /// <summary>Pages a block of <paramref name="bytes"/> occupies as a run (bytes at most the arena's size).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int PagesFor(long bytes) => (int)((bytes + PageSize - 1) >> PageShift);

    /// <summary>The requested size of the run block at <paramref name="address"/> whose state word is
    /// <paramref name="state"/>: its page count from the run head's descriptor, the rest from the state word's size
    /// bits ((size - 1) mod 2^16, and a page is at most 2^16 bytes). The caller keeps the run from moving or being
    /// freed while it reads (a pin, a freeze, or the block just allocated by it).</summary>
    public long RunSize(nint address, long state)
    {
        ref PageDescriptor d = ref Page(PageOf(address));
        return ((long)(d.RunPages - 1) << PageShift) + (EntryState.SizeLow(state) & (PageSize - 1)) + 1;
    }

    /// <summary>The requested size of a block: a slab slot's from its state word alone, a run's with
    /// <see cref="RunSize"/> (same conditions).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long BlockSize(nint address, long state) =>
        (state & EntryState.Run) == 0 ? EntryState.SlabSize(state) : RunSize(address, state);

    public int GetPageblockBits(int pageblock)
    {
        int word = Volatile.Read(ref _pageblockBits[PageblockBits.WordOf(pageblock)]);
        return (word >> PageblockBits.ShiftOf(pageblock)) & ((1 << PageblockBits.BitsPerPageblock) - 1);
    }

    public void SetPageblockBits(int pageblock, int mask, int value)
    {
        ref int word = ref _pageblockBits[PageblockBits.WordOf(pageblock)];
        int shift = PageblockBits.ShiftOf(pageblock);
        while (true)
        {
            int old = Volatile.Read(ref word);
            int updated = (old & ~(mask << shift)) | ((value & mask) << shift);
            if (old == updated || Interlocked.CompareExchange(ref word, updated, old) == old) return;
        }
    }

    public MigrateType GetMigrateType(int pageblock) => (MigrateType)(GetPageblockBits(pageblock) & PageblockBits.MigrateTypeBit);
    public void SetMigrateType(int pageblock, MigrateType type) => SetPageblockBits(pageblock, PageblockBits.MigrateTypeBit, (int)type);
    public bool GetSkip(int pageblock) => (GetPageblockBits(pageblock) & PageblockBits.SkipBit) != 0;
    public void SetSkip(int pageblock, bool skip) => SetPageblockBits(pageblock, PageblockBits.SkipBit, skip ? PageblockBits.SkipBit : 0);

    public void Dispose()
    {
        if (Pages != null) { MetadataMemory.Free(Pages, DescriptorArrayBytes, _os); Pages = null; }
        if (_pageblockBits != null) { MetadataMemory.Free(_pageblockBits, _pageblockBitsBytes, _os); _pageblockBits = null; }
    }
}
