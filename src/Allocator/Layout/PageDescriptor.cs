using System.Runtime.InteropServices;

namespace Compaction.Allocator.Layout;

/// <summary>What a page currently is. See native-layout.md, "Page descriptor".</summary>
internal enum PageKind : byte
{
    /// <summary>Inside a free buddy block, not its first page (also: a free page the compactor isolated).</summary>
    FreeTail = 0,
    /// <summary>First page of a free buddy block; <see cref="PageDescriptor.Order"/> is valid and the page is on a free list.</summary>
    FreeHead = 1,
    /// <summary>First page of a page run holding one large block; <see cref="PageDescriptor.RunHandle"/> names its handle entry.</summary>
    RunHead = 2,
    /// <summary>First page of a slab; class, counts, free-slot list and fullness links are valid.</summary>
    SlabHead = 3,
    /// <summary>A later page of a run or slab; <see cref="PageDescriptor.TailHead"/> is the index of its head page.</summary>
    Tail = 4,
}

/// <summary>
/// The per-page descriptor, the analogue of the kernel's struct page: 32 bytes per page (0.78% of a 4 KiB page).
/// native-layout.md, "Page descriptor", draws it and says which lock protects each field for each kind.
/// </summary>
/// <remarks>
/// Two words are shared by kind (like struct page's unions); they are reached only through the typed accessors below,
/// which name the kind they belong to:
/// <code>
///   offset 24 (word A): RunHead -> RunHandle   SlabHead -> SlabFreeSlot   Tail -> TailHead
///   offset 28 (word B): RunHead -> RunPages    SlabHead -> SlabGroup
///   offset  4 (u16)   : SlabHead -> bits 0-14 SlabClass, bit 15 SlabKind (0 movable, 1 unmovable)
///   offset  3 (u8)    : SlabHead -> bit 0 SlabIsolated   FreeHead -> bit 1 FreePurged, bit 2 FreeAged
/// </code>
/// Invariant for a slab head: RefCount == slots handed out (to handles or to per-thread caches) and
/// RefCount + |free-slot list| + (capacity - Bump) == capacity.
/// All-zero is a valid descriptor (a FreeTail page), so a zeroed array needs no initialisation.
/// </remarks>
[StructLayout(LayoutKind.Sequential, Size = 32)]
internal struct PageDescriptor
{
    private const ushort SlabKindBit = 1 << 15;
    private const byte IsolatedFlag = 1;
    private const byte PurgedFlag = 2;
    private const byte AgedFlag = 4;

    public PageKind Kind;
    /// <summary>Free head: buddy order. (A run's order is not kept: runs are exact.)</summary>
    public byte Order;
    /// <summary>Migrate type the page was allocated as (counts "compatible" pages when claiming a pageblock).</summary>
    public MigrateType AllocType;
    private byte _flags;
    private ushort _slabClassWord;
    /// <summary>Slab head: slots carved so far (slots at or beyond Bump were never handed out).</summary>
    public ushort Bump;
    /// <summary>Slab head: slots handed out. Run head: 1.</summary>
    public int RefCount;
    /// <summary>Atomic pins on blocks whose first page this is; read lock-free by the compactor's cheap check.</summary>
    public int PinCount;
    /// <summary>Free list (free head) or fullness list (slab head) link, page index; -1 for none.</summary>
    public int Next;
    /// <summary>The backward link of the same list.</summary>
    public int Prev;
    private int _wordA;
    private int _wordB;

    // ---- run head

    /// <summary>Run head: index of the handle entry of the block (the reverse map of a run).</summary>
    public uint RunHandle { readonly get => (uint)_wordA; set => _wordA = (int)value; }
    /// <summary>Run head: pages in the run.</summary>
    public int RunPages { readonly get => _wordB; set => _wordB = value; }

    // ---- tail

    /// <summary>Tail: page index of the run's or slab's head.</summary>
    public int TailHead { readonly get => _wordA; set => _wordA = value; }

    // ---- slab head

    /// <summary>Slab head: the first free slot of the slab's free-slot list, -1 when empty.</summary>
    public int SlabFreeSlot { readonly get => _wordA; set => _wordA = value; }
    /// <summary>Slab head: the fullness group the slab is linked on, -1 when on none (isolated).</summary>
    public int SlabGroup { readonly get => _wordB; set => _wordB = value; }
    /// <summary>Slab head: size-class index.</summary>
    public readonly int SlabClass => _slabClassWord & ~SlabKindBit;
    /// <summary>Slab head: the kind of block the slab holds.</summary>
    public readonly BlockKind SlabKind => (_slabClassWord & SlabKindBit) != 0 ? BlockKind.Unmovable : BlockKind.Movable;
    /// <summary>Slab head: true when the slab holds movable blocks of class <paramref name="sizeClass"/>.</summary>
    public readonly bool IsMovableSlabOf(int sizeClass) => _slabClassWord == sizeClass;
    /// <summary>Slab head: isolated by the compactor — off the fullness lists, so nothing allocates from it, and
    /// never released while isolated.</summary>
    public bool SlabIsolated
    {
        readonly get => (_flags & IsolatedFlag) != 0;
        set => _flags = value ? (byte)(_flags | IsolatedFlag) : (byte)(_flags & ~IsolatedFlag);
    }

    // ---- free head

    /// <summary>Free head: the block's pages were purged (madvise DONTNEED) since it was last put on a free list, so
    /// they are committed but not resident. Cleared whenever the block is linked anew (merged, split, freed): a purged
    /// block merged with a resident one counts as resident, which only overstates resident memory.</summary>
    public bool FreePurged
    {
        readonly get => (_flags & PurgedFlag) != 0;
        set => _flags = value ? (byte)(_flags | PurgedFlag) : (byte)(_flags & ~PurgedFlag);
    }

    /// <summary>Free head: the block was already free, untouched, at the last decay sweep; the next sweep purges it.
    /// Cleared with <see cref="FreePurged"/>.</summary>
    public bool FreeAged
    {
        readonly get => (_flags & AgedFlag) != 0;
        set => _flags = value ? (byte)(_flags | AgedFlag) : (byte)(_flags & ~AgedFlag);
    }

    /// <summary>Free head: clears both decay flags (the block is linked anew).</summary>
    public void ClearFreeFlags() => _flags = 0;

    /// <summary>Turns the page into the head of an empty, unlinked slab of <paramref name="sizeClass"/> and <paramref name="kind"/>.</summary>
    public void InitSlabHead(int sizeClass, BlockKind kind)
    {
        Kind = PageKind.SlabHead;
        _slabClassWord = (ushort)(sizeClass | (kind == BlockKind.Unmovable ? SlabKindBit : 0));
        Bump = 0;
        RefCount = 0;
        PinCount = 0;
        _flags = 0;
        _wordA = -1;
        _wordB = -1;
        Next = Prev = -1;
    }

    /// <summary>Turns the page into the head of a run of <paramref name="pages"/> naming handle entry <paramref name="handle"/>.</summary>
    public void InitRunHead(uint handle, int pages)
    {
        Kind = PageKind.RunHead;
        RefCount = 1;
        PinCount = 0;
        _wordA = (int)handle;
        _wordB = pages;
    }

    /// <summary>Turns the page into a tail of the run or slab headed at <paramref name="head"/>.</summary>
    public void InitTail(int head)
    {
        Kind = PageKind.Tail;
        PinCount = 0;
        _wordA = head;
    }

    /// <summary>Turns the page into a free page not (yet) heading a free block.</summary>
    public void InitFree()
    {
        Kind = PageKind.FreeTail;
        RefCount = 0;
        _wordA = -1;
    }
}
