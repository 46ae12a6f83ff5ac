using Compaction.Allocator.Pages;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// The free scanner and its pool: compaction_alloc, compaction_free, release_freepages.
// Asynchronous runs take the zone lock with a try-lock wherever they acquire work (isolating free pages, committing,
// writing a destination's descriptors); a miss ends the run as contended and takes no blocking lock afterwards. Only
// giving pages back (a migrated source, the pool at the end of a run) blocks, because it cannot be left undone.
internal sealed unsafe class FreeScanner
{
    private readonly CompactionContext _cx;
    private readonly PageMap _map;
    private readonly Zone _zone;
    private readonly FreePool _freePool = new();                      // cc->freepages, protected by RunLock
    private readonly List<(int start, int order)> _isolated = [];     // one pageblock's isolated free blocks

    public FreeScanner(CompactionContext cx)
    {
        _cx = cx;
        _map = cx.Map;
        _zone = cx.Zone;
    }

    /// <summary>Pages the pool holds.</summary>
    public long PoolPages => _freePool.TotalPages;

    /// <summary>Gives unused destination pages back to the pool without a lock (see <see cref="ReturnToPool"/>: the
    /// caller wrote nothing on them).</summary>
    public void PutBack(int start, int pages) => _freePool.Add(start, pages);

    /// <summary>
    /// compaction_alloc: <paramref name="pages"/> contiguous free pages from the isolated pool, isolating more free
    /// blocks with the free scanner (<see cref="IsolateTargets"/>) when no range of the pool is long enough. The pool
    /// keeps isolated pages as coalesced ranges, so a run of 9 pages can use 8 + 1 adjacent free pages instead of
    /// needing a block of 16. Returns the first page (committed, marked FreeTail, owned by the caller) or -1: no
    /// target of that size (the unit stays, the pass goes on with the others) or (async) a zone lock was contended.
    /// </summary>
    public int CompactionAlloc(CompactControl cc, int pages, int migratePb, ref int freePb)
    {
        if (!IsolateTargets(cc, pages, migratePb, ref freePb)) return -1;
        int start = _freePool.Take(pages);
        if (!_cx.Acquire(_zone.Lock, cc)) { _freePool.Add(start, pages); return -1; }
        bool committed = _zone.CommitRangeLocked(start, pages);
        _zone.Lock.Exit();
        if (committed) return start;
        _freePool.Add(start, pages);
        return -1;
    }

    /// <summary>
    /// The free scanner, on demand: isolates free blocks pageblock by pageblock, downward from the top of the used
    /// range and never at or below the migrate scanner, until the pool holds a range of <paramref name="pages"/>
    /// pages. True when it does. False when the scanners met, when (async) a zone lock was contended, or when the
    /// pool already holds <see cref="TargetReserve"/> pages in ranges too short for the unit: the kernel's free
    /// scanner isolates only as many free pages as the migrate scanner needs (nr_freepages >= nr_migratepages); here
    /// a unit of n pages needs one range of n, and walking on down for it would take every hole of the zone into the
    /// pool at the first large slab, meet the migrate scanner at once and end the pass having moved one pageblock's
    /// small units. The unit that finds no target stays where it is; smaller units go on filling the holes the pool
    /// holds, and a later pass, finding the larger holes those moves opened, moves it.
    /// </summary>
    public bool IsolateTargets(CompactControl cc, int pages, int migratePb, ref int freePb)
    {
        while (!_freePool.Fits(pages))
        {
            if (_freePool.TotalPages >= TargetReserve(pages) || freePb <= migratePb) return IsolateFromFreeLists(cc, pages, migratePb);
            int pb = freePb--;
            if (!cc.IgnoreSkip && _map.GetSkip(pb)) continue;
            // Destinations come from committed memory only, so a compaction never raises resident memory: a pageblock
            // that is not committed is wholly free, and filling it would commit fresh memory before any source is given
            // back. Racy read (commits and decommits happen under the zone lock): a stale "committed" is corrected by
            // the commit in CompactionAlloc, at most one pageblock per isolation.
            if (!_cx.Pages.Memory.IsCommitted(pb)) continue;
            // Room first, for every free block a pageblock can hold: IsolateFreeBlocksLocked then allocates nothing
            // under the zone lock (a list failing to grow there would leave the lock held by this thread and the
            // blocks isolated before it off every list). The finally is for any other exception.
            _isolated.Clear();
            _isolated.EnsureCapacity(_map.PageblockPages);
            if (!_cx.Acquire(_zone.Lock, cc)) { freePb++; return false; }
            int isolated;
            try
            {
                isolated = _zone.IsolateFreeBlocksLocked(pb, _isolated);
            }
            finally
            {
                _zone.Lock.Exit();
            }
            PoolIsolated();
            _cx.Counters[CompactFreeScanned] += _map.PageblockPages;
            if (cc.Daemon) _cx.Counters[CompactDaemonFreeScanned] += _map.PageblockPages;
            _cx.Counters[CompactIsolated] += isolated;
            if (isolated == 0 && !_map.GetSkip(pb))
            {
                _map.SetSkip(pb, true);
                _cx.Counters[SkipBitsSet]++;
            }
        }
        return true;
    }

    /// <summary>
    /// fast_isolate_freepages: when the walk down has stopped (the pool holds enough short holes, or the scanners met)
    /// and still no range fits the unit, the free lists may hold a block of the unit's order further up that the walk
    /// has not reached or had taken nothing from at the time: the highest such block above the migrate scanner, in a
    /// pageblock that is committed and not wholly free, is isolated into the pool
    /// (<see cref="Zone.IsolateFreeBlockAboveLocked"/>). Without it a unit larger than every hole of the pool stays
    /// where it is for good: a sparse 16-page slab alone in its pageblock, while the pageblock above it has 48 free
    /// pages, kept that pageblock from ever being freed. True when the pool now fits the unit.
    /// </summary>
    private bool IsolateFromFreeLists(CompactControl cc, int pages, int migratePb)
    {
        int order = Zone.OrderFor(pages);
        if (order >= _map.PageblockOrder) return false;   // only wholly free pageblocks hold it: not a hole to fill
        if (!_cx.Acquire(_zone.Lock, cc)) return false;
        (int head, int isolatedOrder) block;
        try
        {
            block = _zone.IsolateFreeBlockAboveLocked(order, migratePb, FreeListScanLimit);
        }
        finally
        {
            _zone.Lock.Exit();
        }
        if (block.head < 0) return false;
        int isolated = 1 << block.isolatedOrder;
        try
        {
            _freePool.Add(block.head, isolated);
        }
        catch (OutOfMemoryException)
        {
            lock (_zone.Lock) _zone.FreeRangeLocked(block.head, isolated);
            throw;
        }
        _cx.Counters[CompactIsolated] += isolated;
        _cx.Counters[FreeListIsolated] += isolated;
        return _freePool.Fits(pages);
    }

    /// <summary>Blocks of each free list <see cref="IsolateFromFreeLists"/> looks at, at most: the lists are not
    /// ordered by address, so it takes the highest of the first few rather than walking a long list under the lock.</summary>
    private const int FreeListScanLimit = 64;

    /// <summary>Pages of holes too short for a unit of <paramref name="pages"/> the pool may hold before the free
    /// scanner stops looking further down for that unit: twice the unit, plus a pageblock (what one more isolation
    /// can add).</summary>
    private long TargetReserve(int pages) => 2L * pages + _map.PageblockPages;

    /// <summary>Moves the blocks the free scanner just isolated (<see cref="_isolated"/>) into the pool. The pool's list
    /// may grow, so a managed allocation may fail part way: the blocks not yet pooled then go back to the buddy
    /// allocator before the exception leaves, so no page is left off both (the pass's own finally returns the pool).</summary>
    private void PoolIsolated()
    {
        int pooled = 0;
        try
        {
            for (; pooled < _isolated.Count; pooled++) _freePool.Add(_isolated[pooled].start, 1 << _isolated[pooled].order);
        }
        finally
        {
            if (pooled < _isolated.Count)
                lock (_zone.Lock)
                    for (int i = pooled; i < _isolated.Count; i++) _zone.FreeRangeLocked(_isolated[i].start, 1 << _isolated[i].order);
        }
    }

    /// <summary>compaction_free: destination pages the caller did not use go back to the pool, their descriptors
    /// back to FreeTail (the caller may have written run or slab descriptors on them). Lock-free (unless the pool cannot
    /// grow, below): pool pages are on no
    /// free list and belong to the compactor; the only other readers are the lock-free migrate scanner and buddy
    /// merging, which needs a FreeHead and sees none here whichever value it reads.</summary>
    public void ReturnToPool(int start, int pages)
    {
        // A failed migration may have copied its block here: with poisoning on, the pages hold the pattern again
        // before they rejoin free memory (the pool's pages are the compactor's, so no lock is needed).
        if (_cx.Pages.Poison.Enabled) FreePoison.Fill(_map.AddressOf(start), (long)pages << _map.PageShift);
        for (int p = start; p < start + pages; p++) _map.Page(p).InitFree();
        try
        {
            _freePool.Add(start, pages);
        }
        catch (OutOfMemoryException)
        {
            // The pool's list could not grow: the pages go straight back to the buddy allocator instead (called from
            // finally blocks that must go on settling the rest of their batch, so nothing is rethrown).
            lock (_zone.Lock) _zone.FreeRangeLocked(start, pages);
        }
    }

    /// <summary>release_freepages: the pool goes back to the buddy allocator at the end of a run.</summary>
    public void ReturnFreePool()
    {
        if (_freePool.Count == 0) return;
        lock (_zone.Lock)
        {
            _cx.Counters[LockAcquisitions]++;
            foreach ((int start, int length) in _freePool.Ranges) _zone.FreeRangeLocked(start, length);
        }
        _freePool.Clear();
    }

    /// <summary>Frees a migrated source run to the buddy allocator. Takes the zone lock (blocking, in every mode).</summary>
    public void FreePages(int start, int pages)
    {
        // The block lives at its destination now; its old pages become free memory, poisoned when that is on.
        if (_cx.Pages.Poison.Enabled) FreePoison.Fill(_map.AddressOf(start), (long)pages << _map.PageShift);
        lock (_zone.Lock)
        {
            _cx.Counters[LockAcquisitions]++;
            _zone.FreeRangeLocked(start, pages);
        }
    }
}
