using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Pages;

/// <summary>Which zone: the kernel's ZONE_NORMAL and ZONE_MOVABLE.</summary>
internal enum ZoneKind : byte
{
    Normal = 0,
    Movable = 1,
}

/// <summary>
/// A zone of the arena and its buddy allocator: free lists per order and migrate type, split and merge, the kernel's
/// fallback and pageblock-stealing rules, and exact page runs (the tail of a power-of-two block goes back, like
/// alloc_pages_exact). Runs larger than the largest order take whole contiguous pageblocks.
/// </summary>
/// <remarks>
/// Lock ordering: <see cref="Lock"/> is the innermost lock of the heap except the handle-table lock; callers may hold
/// a size-class lock when they take it (native-layout.md, "Lock ordering").
/// Every method whose name ends in <c>Locked</c> requires the caller to hold <see cref="Lock"/>.
/// The zone spans pages <c>[Start, End)</c>, both aligned to the max-order block size.
/// <para>The <b>frontier</b> (<see cref="Frontier"/>) splits the zone in two: the max-order blocks at and above it were
/// never handed to the free lists, so their descriptors are the untouched zeros of the descriptor array and their
/// pageblocks' migrate type bits are not written yet; they count as free blocks of <see cref="InitialType"/>. The
/// allocator takes the next one, lowest first, only when the free lists cannot serve a request
/// (<see cref="ExtendFrontierLocked"/>), so everything that walks the zone walks <c>[Start, Frontier)</c> and costs
/// what the zone has used, not what it reserves (native-layout.md, "Zones and migrate types").</para>
/// </remarks>
internal sealed unsafe partial class Zone
{
    public const int MigrateTypes = 2;

    public readonly Lock Lock = new();
    public readonly ZoneKind Kind;
    public readonly int Start;
    public readonly int End;
    /// <summary>The migrate type of the zone's fresh pageblocks: those above the frontier, and each one as it is
    /// handed out (unmovable for the normal zone, movable for the movable zone).</summary>
    public readonly MigrateType InitialType;
    private readonly PageMap _map;
    private readonly ArenaMemory _memory;
    private readonly int _maxOrder;
    private readonly int[] _freeHeads;        // [order * MigrateTypes + type] -> first page of a free block, or -1
    private readonly long[] _freeBlocks;      // same index -> number of free blocks on that list
    private long _freePages;                  // free pages on the lists plus every page above the frontier
    private long _purgedPages;                // pages of free blocks whose FreePurged flag is set
    private int _frontier;                    // first page never handed out; only rises; written under the lock
    private readonly int[] _nextFit = new int[MigrateTypes];     // per type: the page after the last allocation (a hint)

    public Zone(ZoneKind kind, int start, int end, PageMap map, ArenaMemory memory, MigrateType initialType)
    {
        Kind = kind;
        Start = start;
        End = end;
        InitialType = initialType;
        _map = map;
        _memory = memory;
        _maxOrder = map.MaxOrder;
        _freeHeads = new int[(_maxOrder + 1) * MigrateTypes];
        _freeBlocks = new long[(_maxOrder + 1) * MigrateTypes];
        Array.Fill(_freeHeads, -1);
        // Nothing is written to the descriptors or the pageblock bitmap: the whole zone starts above the frontier.
        _frontier = start;
        _freePages = end - start;
    }

    public int PageCount => End - Start;
    /// <summary>Free pages of the zone. Lock-free: a racy read of a counter written under the lock; a 64-bit load is
    /// never torn, and callers use it as a heuristic or a statistic (a consistent value needs the lock).</summary>
    public long FreePages => Volatile.Read(ref _freePages);

    /// <summary>Pages of free blocks purged and not reused since (committed, not resident). Written under the lock;
    /// lock-free readers get a racy 64-bit read, a heuristic's input.</summary>
    public long PurgedPages => Volatile.Read(ref _purgedPages);
    public int MaxOrder => _maxOrder;
    public bool Contains(int page) => page >= Start && page < End;

    /// <summary>
    /// The first page above which the zone was never handed out: <c>[Start, Frontier)</c> is the used range, whose
    /// descriptors and pageblock bits are meaningful; <c>[Frontier, End)</c> is max-order free blocks of
    /// <see cref="InitialType"/>, all zeros. Under the lock the value is exact. Lock-free readers (the compactor's
    /// scanners, statistics) are safe because it is written only under the lock, after the descriptors and bits of
    /// the block it passes, it only rises, and an int load is never torn: a stale value is lower than the real one,
    /// which only ends a walk early, before pages that were free (never handed out) when the walk began.
    /// </summary>
    public int Frontier => Volatile.Read(ref _frontier);

    /// <summary>Max-order blocks above the frontier (lock-free like <see cref="Frontier"/>).</summary>
    private long FrontierBlocks => (End - Frontier) >> _maxOrder;

    /// <summary>Free blocks of (order, type), the blocks above the frontier included (max-order blocks of
    /// <see cref="InitialType"/>). Under the lock the value is exact; without it (the compactor's score) it is a racy
    /// read of 64-bit counters, never torn, at worst one update old: a heuristic may be off by one block, nothing else
    /// depends on it.</summary>
    public long FreeBlocks(int order, MigrateType type) =>
        _freeBlocks[order * MigrateTypes + (int)type] + (order == _maxOrder && type == InitialType ? FrontierBlocks : 0);

    /// <summary>The migrate type of pageblock <paramref name="pb"/> of this zone: its bitmap bits below the frontier,
    /// <see cref="InitialType"/> above it (bits not written yet). Exact under the lock; lock-free it is as racy as
    /// any pageblock-bit read.</summary>
    public MigrateType MigrateTypeOf(int pb) => pb << _map.PageblockOrder >= Frontier ? InitialType : _map.GetMigrateType(pb);

    // ------------------------------------------------------------------ allocation

    /// <summary>
    /// Allocates exactly <paramref name="count"/> contiguous pages of migrate type <paramref name="type"/>, committing
    /// their pageblocks. Takes the zone lock. Returns the first page, or -1 when the zone cannot serve the run
    /// (no free block large enough, or the OS refused to commit).
    /// </summary>
    public int AllocatePages(int count, MigrateType type)
    {
        lock (Lock) return AllocatePagesLocked(count, type);
    }

    public int AllocatePagesLocked(int count, MigrateType type, bool mayCrossPageblock = false)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        Debug.Assert(count > 0);
        int order = OrderFor(count);
        int start;
        bool newRegion = false;   // the allocation starts or continues the next-fit region (below)
        if (order > _maxOrder)
        {
            start = TakeContiguousPageblocksLocked(count, type);
            if (start < 0) return -1;
        }
        else
        {
            // Where the block comes from, in order (the kernel's rules, with the frontier's blocks in the place they
            // would hold on the free list of the zone's type, at its max order):
            //  1. the smallest fitting free block of the request's own type (__rmqueue_smallest);
            //  2. when the request is of the zone's type: the frontier's next max-order block, which is of that type,
            //     so it is used before any block of the other type is stolen and types mix no more than before;
            //  3. the largest block of the other type (__rmqueue_fallback). For a request of the other type the
            //     frontier's blocks are the zone type's largest blocks: one is taken (and changes type outright) only
            //     when no max-order block of the zone's type is free on the lists, and before any smaller block.
            // Before all of them: the free pages right after the last allocation of the request's type, when they
            // hold it inside one pageblock (next fit; see TakeNextFitLocked), or for a run, when they and the wholly
            // free pageblock after them do (TakeAcrossPageblockLocked).
            start = TakeNextFitLocked(count, type);
            if (start < 0 && mayCrossPageblock) start = TakeAcrossPageblockLocked(count, type);
            newRegion = true;
            if (start < 0)
            {
                start = RemoveSmallestLocked(order, type, out int taken);
                if (start < 0 && type == InitialType && ExtendFrontierLocked()) start = RemoveSmallestLocked(order, type, out taken);
                if (start < 0) { start = RemoveFallbackLocked(order, type, count); taken = _maxOrder; }
                if (start < 0) return -1;
                // Hand back the tail of the power-of-two block (alloc_pages_exact).
                if (count < (1 << order)) FreeRangeLocked(start + count, (1 << order) - count);
                // A hole filled (a block smaller than a pageblock) leaves the next-fit region where it was, so that
                // the region is not abandoned with its free pages around a block placed elsewhere.
                newRegion = taken >= _map.PageblockOrder;
            }
        }
        if (!CommitRangeLocked(start, count))
        {
            // Only the next-fit and own-type paths get here (a fallback and a run of pageblocks committed before they
            // changed anything, so this commit was a no-op for them). The next-fit region stays where it was: the
            // pages go back, and the retry after room is made (or the other zone) must find the region's remaining
            // pages, not the pages of this refused attempt.
            FreeRangeLocked(start, count);
            return -1;
        }
        if (newRegion) _nextFit[(int)type] = start + count;
        for (int p = start; p < start + count; p++) _map.Page(p).AllocType = type;
        ClearSkipBits(start, count);
        return start;
    }

    /// <summary>Order of the smallest power-of-two block that holds <paramref name="count"/> pages.</summary>
    public static int OrderFor(int count) => count <= 1 ? 0 : 32 - System.Numerics.BitOperations.LeadingZeroCount((uint)(count - 1));

    public bool CommitRangeLocked(int start, int count)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int first = _map.PageblockOf(start), last = _map.PageblockOf(start + count - 1);
        for (int pb = first; pb <= last; pb++)
            if (!_memory.Commit(pb)) return false;
        return true;
    }

    /// <summary>__rmqueue_smallest: the smallest free block of the wanted type that fits, split down (expand).</summary>
    private int RemoveSmallestLocked(int order, MigrateType type, out int taken)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        taken = -1;
        for (int o = order; o <= _maxOrder; o++)
        {
            int head = _freeHeads[o * MigrateTypes + (int)type];
            if (head < 0) continue;
            taken = o;
            bool purged = _map.Page(head).FreePurged;
            RemoveFreeBlockLocked(head, o, type);
            ExpandLocked(head, order, o, type, purged);
            return head;
        }
        return -1;
    }

    /// <summary>expand(): split a block of order <paramref name="high"/> at <paramref name="page"/> down to
    /// <paramref name="low"/>, putting each upper half on the free list of <paramref name="type"/>; the halves of a
    /// <paramref name="purged"/> block stay marked purged.</summary>
    private void ExpandLocked(int page, int low, int high, MigrateType type, bool purged)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        while (high > low)
        {
            high--;
            AddFreeBlockLocked(page + (1 << high), high, type);
            if (purged) MarkPurgedLocked(page + (1 << high));
        }
        _map.Page(page).Kind = PageKind.FreeTail; // the caller turns it into a run or slab head
    }

    /// <summary>
    /// Takes the pages <c>[start, end)</c>, every one of which lies in a free block, off the free lists: each covering
    /// block is removed and what it holds outside the range is freed again. The range's pages are left FreeTail, on
    /// no list, for the caller to initialise. Caller holds the lock.
    /// </summary>
    private void TakeFreeRangeLocked(int start, int end)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        for (int p = start; p < end;)
        {
            FindFreeBlockLocked(p, out int head, out int order);
            int blockEnd = head + (1 << order);
            RemoveFreeBlockLocked(head, order, _map.GetMigrateType(_map.PageblockOf(head)));
            // Marked taken first, so that re-freeing the outside parts cannot merge with the range's pages.
            for (int q = Math.Max(head, start); q < Math.Min(blockEnd, end); q++) _map.Page(q).Kind = PageKind.Tail;
            if (head < start) FreeRangeLocked(head, start - head);
            if (blockEnd > end) FreeRangeLocked(end, blockEnd - end);
            p = blockEnd;
        }
        for (int q = start; q < end; q++) _map.Page(q).Kind = PageKind.FreeTail;
    }

    /// <summary>
    /// Next fit inside a pageblock: an exact allocation of n pages takes a block of 2^k and hands back the 2^k - n
    /// pages after it as smaller buddy blocks, which no later request of more than their size can use; when runs of
    /// assorted lengths are allocated one after another (a fill), those tails pile up as free pages inside committed
    /// pageblocks (18% over live at the peak of a 2 GiB fill of 16 B-256 KiB blocks). So a request whose pages,
    /// from the page after the last allocation of its type on, are all free (runs and slabs need no alignment) takes
    /// them, and the pageblock fills like a bump region. Only inside one pageblock and only from blocks smaller than a
    /// pageblock: a wholly free pageblock is never broken into, so high-order requests and decommits keep what the
    /// buddy allocator keeps for them. The pointer is a hint checked at use. Returns the first page or -1. Caller
    /// holds the lock.
    /// </summary>
    private int TakeNextFitLocked(int count, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int start = _nextFit[(int)type], end = start + count;
        if (start <= Start || end > _frontier || _map.PageblockOf(start) != _map.PageblockOf(end - 1)) return -1;
        if (!InFreeBlocksBelowPageblockLocked(start, end, type)) return -1;
        TakeFreeRangeLocked(start, end);
        return start;
    }

    /// <summary>Whether every page of <c>[start, end)</c> lies in a free block of <paramref name="type"/> smaller than a
    /// pageblock (a wholly free pageblock is never broken into by next fit). Caller holds the lock.</summary>
    private bool InFreeBlocksBelowPageblockLocked(int start, int end, MigrateType type)
    {
        for (int p = start; p < end;)
        {
            if (!TryFindFreeBlockLocked(p, out int head, out int order) || order >= _map.PageblockOrder
                || _map.GetMigrateType(_map.PageblockOf(head)) != type) return false;
            p = head + (1 << order);
        }
        return true;
    }

    /// <summary>Whether the free lists of <paramref name="type"/> hold a block of an order from
    /// <paramref name="low"/> to <paramref name="high"/>. Caller holds the lock.</summary>
    private bool AnyFreeBlockLocked(int low, int high, MigrateType type)
    {
        for (int o = low; o <= high; o++)
            if (_freeHeads[o * MigrateTypes + (int)type] >= 0) return true;
        return false;
    }

    /// <summary>
    /// Next fit across a pageblock boundary, for runs: when the request does not fit in what is left of the next-fit
    /// pageblock and the buddy allocator would break a wholly free pageblock for it anyway (no smaller free block of
    /// its type fits it), the run takes the rest of the next-fit pageblock and continues into the following pageblock,
    /// which must be wholly free and of its type. Without it each pageblock a fill passes through keeps what was left
    /// when a run did not fit: about half a run, 1.2% of a fill of 16 B-256 KiB blocks. A run that crosses a
    /// boundary is an ordinary run (its pages are contiguous; nothing needs a run inside one pageblock: the migrate
    /// scanner steps over the tail pages of a run whose head lies in the pageblock before). Returns the first page or
    /// -1. Caller holds the lock.
    /// </summary>
    private int TakeAcrossPageblockLocked(int count, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int start = _nextFit[(int)type], end = start + count;
        // Only runs below a pageblock's order: the compactor moves those (a larger one would hold two pageblocks).
        if (OrderFor(count) >= _map.PageblockOrder || start <= Start || start >= _frontier) return -1;
        int next = (_map.PageblockOf(start) + 1) << _map.PageblockOrder;
        if (end <= next || next >= End) return -1;
        // A free block of the request's order that is smaller than a pageblock lies outside the next-fit pageblock
        // (what is left in it holds fewer pages than the request): the free lists place the run there instead.
        if (AnyFreeBlockLocked(OrderFor(count), _map.PageblockOrder - 1, type)) return -1;
        if (!InFreeBlocksBelowPageblockLocked(start, next, type)) return -1;
        // The frontier moves only when the free lists hold no wholly free pageblock of the type (as for any
        // allocation): the region then goes on into the frontier's block.
        if (next >= _frontier && (AnyFreeBlockLocked(_map.PageblockOrder, _maxOrder, type) || !(type == InitialType && ExtendFrontierLocked())))
            return -1;
        if (!TryFindFreeBlockLocked(next, out _, out int nextOrder) || nextOrder < _map.PageblockOrder
            || _map.GetMigrateType(_map.PageblockOf(next)) != type) return -1;
        TakeFreeRangeLocked(start, end);
        return start;
    }

    private void FindFreeBlockLocked(int page, out int head, out int order)
    {
        if (!TryFindFreeBlockLocked(page, out head, out order)) throw new InvalidOperationException($"page {page} is not inside a free block");
    }

    /// <summary>The free block (on a list) holding <paramref name="page"/>, if any. Caller holds the lock.</summary>
    private bool TryFindFreeBlockLocked(int page, out int head, out int order)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        head = order = -1;
        if (page < Start || page >= _frontier) return false;
        for (int o = 0; o <= _maxOrder; o++)
        {
            int h = page & ~((1 << o) - 1);
            if (h < Start) break;
            ref PageDescriptor d = ref _map.Page(h);
            if (d.Kind == PageKind.FreeHead && d.Order >= o) { head = h; order = d.Order; return true; }
        }
        return false;
    }

    // ------------------------------------------------------------------ freeing

    /// <summary>Frees pages <c>[start, start + count)</c>. Takes the zone lock.</summary>
    public void FreePageRange(int start, int count)
    {
        lock (Lock) FreeRangeLocked(start, count);
    }

    /// <summary>Frees an arbitrary run by splitting it into naturally aligned power-of-two blocks, merging each.</summary>
    public void FreeRangeLocked(int start, int count)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        Debug.Assert(start >= Start && start + count <= _frontier, "only pages below the frontier were ever handed out");
        for (int p = start; p < start + count; p++)
        {
            _map.Page(p).InitFree();
        }
        int s = start, remaining = count;
        while (remaining > 0)
        {
            int order = System.Numerics.BitOperations.TrailingZeroCount(s | (1 << _maxOrder));
            while ((1 << order) > remaining) order--;
            FreeOneLocked(s, order);
            s += 1 << order;
            remaining -= 1 << order;
        }
    }

    /// <summary>
    /// Skip bits are hints for the compactor's scanners. A pageblock whose contents change (pages allocated from it
    /// or freed into it) loses its bit here, so a stale bit never hides it; this replaces the kernel's periodic
    /// reset by kswapd, which this heap does not have. Reading first keeps the common case to a load.
    /// </summary>
    private void ClearSkipBits(int start, int count)
    {
        for (int pb = _map.PageblockOf(start); pb <= _map.PageblockOf(start + count - 1); pb++)
            if (_map.GetSkip(pb)) _map.SetSkip(pb, false);
    }

    /// <summary>__free_one_page: merge with free buddies of equal order, never across pageblocks of different types.</summary>
    private void FreeOneLocked(int page, int order)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        ClearSkipBits(page, 1 << order);
        MigrateType type = _map.GetMigrateType(_map.PageblockOf(page));
        while (order < _maxOrder)
        {
            int buddy = page ^ (1 << order);
            if (buddy < Start || buddy >= End) break;
            ref PageDescriptor b = ref _map.Page(buddy);
            if (b.Kind != PageKind.FreeHead || b.Order != order) break;
            MigrateType buddyType = _map.GetMigrateType(_map.PageblockOf(buddy));
            if (order >= _map.PageblockOrder && buddyType != type) break;
            RemoveFreeBlockLocked(buddy, order, buddyType);
            b.Kind = PageKind.FreeTail;
            page = Math.Min(page, buddy);
            order++;
        }
        AddFreeBlockLocked(page, order, type);
    }

    // ------------------------------------------------------------------ free lists

    private void AddFreeBlockLocked(int page, int order, MigrateType type)
    {
        LinkFreeBlockLocked(page, order, type);
        _freePages += 1 << order;
    }

    /// <summary>Puts a free block on its list without counting its pages (the frontier's blocks are counted already).</summary>
    private void LinkFreeBlockLocked(int page, int order, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int list = order * MigrateTypes + (int)type;
        ref PageDescriptor d = ref _map.Page(page);
        d.Kind = PageKind.FreeHead;
        d.Order = (byte)order;
        d.ClearFreeFlags();
        d.Prev = -1;
        d.Next = _freeHeads[list];
        if (d.Next >= 0) _map.Page(d.Next).Prev = page;
        _freeHeads[list] = page;
        _freeBlocks[list]++;
    }

    // ------------------------------------------------------------------ the frontier

    /// <summary>
    /// Hands the lowest max-order block above the frontier to the free lists of <see cref="InitialType"/>: writes its
    /// pageblocks' migrate type and its head descriptor (its other descriptors are the zeros of a FreeTail already),
    /// then raises the frontier past it, last, so a lock-free reader that sees the new frontier sees the block's
    /// descriptors too. False when the frontier is at the zone's end. Caller holds the lock.
    /// </summary>
    private bool ExtendFrontierLocked()
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int block = _frontier, end = block + (1 << _maxOrder);
        if (block == End) return false;
        for (int pb = block >> _map.PageblockOrder; pb < end >> _map.PageblockOrder; pb++) _map.SetMigrateType(pb, InitialType);
        LinkFreeBlockLocked(block, _maxOrder, InitialType);
        Volatile.Write(ref _frontier, end);
        return true;
    }

    private void RemoveFreeBlockLocked(int page, int order, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int list = order * MigrateTypes + (int)type;
        ref PageDescriptor d = ref _map.Page(page);
        Debug.Assert(d.Kind == PageKind.FreeHead && d.Order == order);
        if (d.Prev >= 0) _map.Page(d.Prev).Next = d.Next; else _freeHeads[list] = d.Next;
        if (d.Next >= 0) _map.Page(d.Next).Prev = d.Prev;
        d.Next = d.Prev = -1;
        if (d.FreePurged) _purgedPages -= 1 << order;
        d.ClearFreeFlags();
        _freeBlocks[list]--;
        _freePages -= 1 << order;
    }

    /// <summary>Marks free block <paramref name="head"/> as purged (its pages were just given back with madvise
    /// DONTNEED) and counts its pages. Caller holds the lock, under which it purged.</summary>
    public void MarkPurgedLocked(int head)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        ref PageDescriptor d = ref _map.Page(head);
        Debug.Assert(d.Kind == PageKind.FreeHead && !d.FreePurged);
        d.FreePurged = true;
        _purgedPages += 1 << d.Order;
    }

    public ZoneCounters Stats;
}

/// <summary>Anti-fragmentation event counters of a zone, written under its lock.</summary>
internal struct ZoneCounters
{
    public long PageblockFallbacks;
    public long PageblocksClaimed;
}
