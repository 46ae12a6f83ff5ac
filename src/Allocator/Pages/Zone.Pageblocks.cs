using System.Diagnostics;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Pages;

// Whole pageblocks of a zone: runs of contiguous pageblocks for runs larger than the largest order, the wholly-free
// test, the free scanner's isolation of a pageblock's free blocks, and the validation of the free lists.
internal sealed unsafe partial class Zone
{
    // ------------------------------------------------------------------ contiguous pageblocks

    /// <summary>
    /// Finds <c>ceil(count / pageblock)</c> contiguous, wholly free pageblocks (lowest address first), removes them
    /// from the free lists, gives back the pages beyond <paramref name="count"/>, and returns the first page or -1.
    /// A run that reaches the frontier continues above it: every pageblock there is free, so the frontier is raised
    /// by just the blocks the run needs, and only when the zone holds them.
    /// </summary>
    private int TakeContiguousPageblocksLocked(int count, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int need = (count + _map.PageblockPages - 1) >> _map.PageblockOrder;
        int firstPb = Start >> _map.PageblockOrder, endPb = End >> _map.PageblockOrder;
        int run = 0;
        for (int pb = firstPb; pb < endPb; pb++)
        {
            if (pb << _map.PageblockOrder >= _frontier)
            {
                int missing = need - run;
                if (endPb - pb < missing) return -1;
                pb += missing - 1;   // the run's last pageblock
                while (_frontier >> _map.PageblockOrder <= pb) ExtendFrontierLocked();
                run = need;
            }
            else
            {
                run = IsPageblockFreeLocked(pb) ? run + 1 : 0;
                if (run < need) continue;
            }
            int startPb = pb - need + 1;
            int start = startPb << _map.PageblockOrder, end = (pb + 1) << _map.PageblockOrder;
            // Committed before the pageblocks are taken and retyped, so that a refusal leaves them free and of their
            // type (see RemoveFallbackLocked).
            if (!CommitRangeLocked(start, count)) return -1;
            TakeFreeRangeLocked(start, end);
            for (int b = startPb; b <= pb; b++) _map.SetMigrateType(b, type);
            if (end - start > count) FreeRangeLocked(start + count, end - start - count);
            return start;
        }
        return -1;
    }

    /// <summary>True when the whole pageblock is free: it lies above the frontier, or its first page lies in a free
    /// block of at least pageblock order.</summary>
    public bool IsPageblockFreeLocked(int pb)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int first = pb << _map.PageblockOrder;
        if (first >= _frontier) return true;
        for (int o = _map.PageblockOrder; o <= _maxOrder; o++)
        {
            int head = first & ~((1 << o) - 1);
            if (head < Start) break;
            ref PageDescriptor d = ref _map.Page(head);
            if (d.Kind == PageKind.FreeHead) return d.Order >= o;
        }
        return false;
    }

    // ------------------------------------------------------------------ the free scanner's side

    /// <summary>
    /// isolate_freepages_block: takes every free block whose head lies in pageblock <paramref name="pb"/> off the free
    /// lists and adds it to <paramref name="pool"/> (the compactor's private free list). Isolated pages are FreeTail
    /// and on no list until <see cref="FreeRangeLocked"/> returns them. Returns the pages isolated.
    /// </summary>
    public int IsolateFreeBlocksLocked(int pb, List<(int start, int order)> pool)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        Debug.Assert(pb << _map.PageblockOrder < _frontier, "the free scanner works below the frontier");
        int first = pb << _map.PageblockOrder, end = first + _map.PageblockPages, isolated = 0;
        MigrateType type = _map.GetMigrateType(pb);
        for (int p = first; p < end;)
        {
            ref PageDescriptor d = ref _map.Page(p);
            if (d.Kind != PageKind.FreeHead) { p++; continue; }
            int order = d.Order;
            pool.Add((p, order));   // first: a managed allocation failing here leaves the block on its free list
            RemoveFreeBlockLocked(p, order, type);
            d.Kind = PageKind.FreeTail;
            isolated += 1 << order;
            p += 1 << order;
        }
        return isolated;
    }

    /// <summary>
    /// fast_isolate_freepages: the highest free block of an order from <paramref name="minOrder"/> up to (not
    /// including) the pageblock order whose pageblock lies above <paramref name="abovePb"/> and has memory behind it,
    /// looking at no more than <paramref name="scanLimit"/> blocks of each list; taken off its list and marked
    /// FreeTail like <see cref="IsolateFreeBlocksLocked"/>. Wholly free pageblocks are left alone: filling one gains no
    /// free pageblock. Returns (head, order), or (-1, -1) when the lists hold no such block. Caller holds the lock.
    /// </summary>
    public (int head, int order) IsolateFreeBlockAboveLocked(int minOrder, int abovePb, int scanLimit)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        MigrateType type = InitialType;
        int best = -1, bestOrder = -1;
        for (int o = Math.Max(minOrder, 0); o < _map.PageblockOrder && o <= _maxOrder; o++)
        {
            int seen = 0;
            for (int p = _freeHeads[o * MigrateTypes + (int)type]; p >= 0 && seen < scanLimit; p = _map.Page(p).Next, seen++)
            {
                int pb = p >> _map.PageblockOrder;
                if (pb <= abovePb || p <= best || !_memory.IsCommitted(pb)) continue;
                best = p;
                bestOrder = o;
            }
        }
        if (best < 0) return (-1, -1);
        RemoveFreeBlockLocked(best, bestOrder, type);
        _map.Page(best).Kind = PageKind.FreeTail;
        return (best, bestOrder);
    }

    /// <summary>Free pages on the free lists inside pageblock <paramref name="pb"/>: all of them for a wholly free one
    /// (which may be the second half of a larger free block, whose head lies outside it). Caller holds the lock.</summary>
    public int FreePagesInPageblockLocked(int pb)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        if (IsPageblockFreeLocked(pb)) return _map.PageblockPages;
        int first = pb << _map.PageblockOrder, end = first + _map.PageblockPages, free = 0;
        for (int p = first; p < end;)
        {
            ref PageDescriptor d = ref _map.Page(p);
            if (d.Kind != PageKind.FreeHead) { p++; continue; }
            free += 1 << d.Order;
            p += 1 << d.Order;
        }
        return free;
    }

    /// <summary>First free block on the list of (order, type), -1 when empty; follow <see cref="PageDescriptor.Next"/>.
    /// Caller holds the lock for as long as it walks the list.</summary>
    public int FreeListHeadLocked(int order, MigrateType type)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        return _freeHeads[order * MigrateTypes + (int)type];
    }

    /// <summary>The first pageblock of the zone, and one past the last below the frontier: the pageblocks a walk of
    /// the zone visits. Lock-free like <see cref="Frontier"/> (a stale end only ends a walk early).</summary>
    public (int first, int end) UsedPageblocks => (Start >> _map.PageblockOrder, Frontier >> _map.PageblockOrder);

    // ------------------------------------------------------------------ validation

    /// <summary>Checks the free lists against the descriptors; caller holds the lock. Returns null when consistent.</summary>
    public string? ValidateLocked()
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        long pages = 0, purged = 0;
        for (int o = 0; o <= _maxOrder; o++)
        {
            for (int t = 0; t < MigrateTypes; t++)
            {
                long n = 0;
                int prev = -1;
                for (int p = _freeHeads[o * MigrateTypes + t]; p >= 0; p = _map.Page(p).Next)
                {
                    ref PageDescriptor d = ref _map.Page(p);
                    if (p < Start || p >= _frontier) return $"{Kind} zone: free page {p} outside the zone's used range";
                    if (d.Kind != PageKind.FreeHead || d.Order != o) return $"{Kind} zone: page {p} on order-{o} list is {d.Kind}/{d.Order}";
                    if (d.Prev != prev) return $"{Kind} zone: broken back link at page {p}";
                    if ((p & ((1 << o) - 1)) != 0) return $"{Kind} zone: free block {p} not aligned to order {o}";
                    prev = p;
                    n++;
                    pages += 1 << o;
                    if (d.FreePurged) purged += 1 << o;
                }
                if (n != _freeBlocks[o * MigrateTypes + t]) return $"{Kind} zone: order {o} type {t} counts {_freeBlocks[o * MigrateTypes + t]}, list has {n}";
            }
        }
        if (_frontier < Start || _frontier > End || (_frontier & ((1 << _maxOrder) - 1)) != 0) return $"{Kind} zone: frontier {_frontier} is not a max-order boundary of the zone";
        if (purged != _purgedPages) return $"{Kind} zone: {_purgedPages} purged free pages counted, the lists' purged blocks hold {purged}";
        if (pages + (End - _frontier) != _freePages) return $"{Kind} zone: free pages {_freePages}, lists hold {pages} and {End - _frontier} lie above the frontier";
        return null;
    }
}
