using System.Diagnostics;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// Slab consolidation (zs_compact): the least-full slab of a class moves into the fullest ones.
internal sealed class SlabConsolidation
{
    private readonly CompactionContext _cx;
    private readonly SlabAllocator _slabs;
    private readonly SlabMover _mover;
    private readonly HashSet<int> _tried = [];   // slabs of the class already tried as sources in this run

    public SlabConsolidation(CompactionContext cx, SlabMover mover)
    {
        _cx = cx;
        _slabs = cx.Slabs;
        _mover = mover;
    }

    /// <summary>
    /// For every movable size class: while zs_can_compact is above zero, move the blocks of the least-full slab
    /// into the fullest ones and free it. A slab whose slots sit in a thread cache is skipped (cache-held failure).
    /// </summary>
    public void ConsolidateSlabs(CompactControl cc)
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        cc.StartTicks = cc.StartTicks == 0 ? _cx.Options.Clock.GetTimestamp() : cc.StartTicks;
        foreach (SlabClass cls in _slabs.Class)
        {
            _tried.Clear();
            while (!_cx.BudgetSpent(cc) && !cc.Contended && ConsolidateOne(cc, cls)) cc.Worked = true;
        }
    }

    /// <summary>
    /// The background compactor's hysteresis for consolidation (like Redis active defrag's threshold): a class is worth
    /// it when zs_can_compact would free at least two slabs and at least an eighth of the class's slabs. Explicit
    /// compaction consolidates down to zero regardless.
    /// </summary>
    private static bool WorthConsolidating(long slabs, long usedSlots, int capacity)
    {
        long freeSlabs = (slabs * capacity - usedSlots) / capacity;
        return slabs >= 3 && freeSlabs >= 2 && freeSlabs * 8 >= slabs;
    }

    /// <summary>True when some movable class is worth consolidating. Lock-free: racy reads of the class counters
    /// (64-bit, never torn); a stale pair only makes one wake drain the caches for nothing, or wait for the next.</summary>
    public bool AnyClassWorthConsolidating()
    {
        foreach (SlabClass cls in _slabs.Class)
            if (WorthConsolidating(Volatile.Read(ref cls.Slabs), Volatile.Read(ref cls.UsedSlots), _slabs.Classes.SlotsPerSlab[cls.Index]))
                return true;
        return false;
    }

    /// <summary>Source slabs of one batch (one barrier), and the items of each in the batch.</summary>
    private readonly List<(int src, int first, int end, int listed)> _sources = [];
    /// <summary>Destination slabs of the current batch that were not in <see cref="_tried"/>: excluded as sources
    /// until the batch is settled (the slots taken in them count in their RefCount before their blocks arrive, so
    /// listing one would look cache-held).</summary>
    private readonly List<int> _filling = [];

    /// <summary>
    /// One step of zs_compact for a class, as one unit of work: least-full slabs are isolated as sources and their
    /// blocks given slots in the fullest slabs (never a new slab) until the batch holds <see cref="UnitMover.MaxBlocks"/>
    /// blocks or a pageblock's worth of source pages, or the class has nothing more to give; then the batch migrates
    /// under one barrier and every source is settled (freed when emptied). Returns false when the class is done.
    /// </summary>
    private bool ConsolidateOne(CompactControl cc, SlabClass cls)
    {
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        MigrationBatch batch = _cx.Batch;
        batch.Clear();
        _sources.Clear();
        _filling.Clear();
        bool more = true;
        Span<nint> one = stackalloc nint[1];
        try
        {
            // The class lock is held for one source slab at a time (its listing, its isolation and its blocks'
            // destination slots: at most a slab's slots), not for the whole batch of up to MaxBlocks blocks, so that a
            // mutator allocating or freeing in the class waits for one slab's worth of this work at most. What the
            // batch holds between two holds is safe without the lock: its sources are isolated (off the fullness
            // lists, never released) and its destination slots are counted in their slabs' RefCount, so no mutator is
            // given them and no destination slab empties; a mutator may free a listed block meanwhile, as it may
            // during the migration.
            while (batch.Count < UnitMover.MaxBlocks && _sources.Count * pages < _cx.Map.PageblockPages)
            {
                if (!_cx.Acquire(cls.Lock, cc))
                {
                    if (_sources.Count == 0) more = false;
                    break;
                }
                SourceStep step;
                try
                {
                    step = AddSourceLocked(cc, cls, one);
                }
                finally
                {
                    cls.Lock.Exit();
                }
                if (step == SourceStep.ClassDone) { more = false; break; }
                if (step == SourceStep.NoRoom) break;   // no slot left in the class for now: settle, then look again
                if (step == SourceStep.Added) _cx.BetweenConsolidationSources?.Invoke(cls);
            }
            foreach (int dst in _filling) _tried.Remove(dst);   // sources again once their new blocks have arrived
            if (_sources.Count > 0) _cx.Migrate();
        }
        finally
        {
            // Settled even when taking a later source or the migration threw (an interrupted lock wait, a list that
            // failed to grow): the migration unfroze what it did not move, an item never migrated is Busy from its
            // Add, and the results say which moved; so every destination slot of a failure is freed and every
            // isolated source goes back to its lists.
            if (_sources.Count > 0)
            {
                lock (cls.Lock)
                {
                    _cx.Counters[LockAcquisitions]++;
                    _mover.ReleaseBatchSlotsLocked(cls, 0, batch.Count);
                    foreach ((int src, int first, int end, int listed) in _sources)
                    {
                        if (_slabs.PutbackLocked(cls, src, releaseIfEmpty: true))
                        {
                            _cx.Counters[LockAcquisitions]++;
                            _cx.Counters[PagesCompacted] += pages;
                        }
                        // Blocks that failed stay in the source slab, which is now marked tried; a later run retries them.
                        if (end - first == listed && AllMoved(batch, first, end)) _cx.Counters[PgmigrateSuccess] += pages;
                    }
                }
            }
        }
        return more;
    }

    private enum SourceStep { Added, CacheHeld, ClassDone, NoRoom }

    /// <summary>
    /// Adds the least-full slab of the class not yet tried to the batch: lists its live blocks, isolates it and gives
    /// each block a slot in the fullest slabs (never a new slab). A slab some of whose slots sit in thread caches is
    /// only marked tried. Caller holds the class lock.
    /// </summary>
    private SourceStep AddSourceLocked(CompactControl cc, SlabClass cls, Span<nint> one)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        MigrationBatch batch = _cx.Batch;
        if (_slabs.CanCompactLocked(cls) <= 0) return SourceStep.ClassDone;
        if (cc.Daemon && !WorthConsolidating(cls.Slabs, cls.UsedSlots, _slabs.Classes.SlotsPerSlab[cls.Index])) return SourceStep.ClassDone;
        int src = _slabs.FindLeastFullLocked(cls, _tried);
        if (src < 0) return SourceStep.ClassDone;
        _tried.Add(src);
        int refs = _mover.ListLiveBlocksLocked(cls, src);
        List<(uint index, long state, nint slot)> live = _mover.Live;
        if (refs != live.Count)
        {
            _cx.Counters[CacheHeldFailures]++;
            return SourceStep.CacheHeld;
        }
        // Room first: once the source is isolated and a destination slot taken, an Add that failed to grow the
        // batch would leave both for good (the batch's settling in ConsolidateOne, which frees them, would never see them).
        batch.EnsureRoom(live.Count);
        _sources.EnsureCapacity(_sources.Count + 1);
        _filling.EnsureCapacity(_filling.Count + live.Count);
        _tried.EnsureCapacity(_tried.Count + live.Count);
        _slabs.IsolateLocked(cls, src);
        int first = batch.Count;
        // Destination slots from the fullest slabs; never carve a new slab for this.
        for (int i = 0; i < live.Count; i++)
        {
            int dst = _slabs.FindSlabLocked(cls, excludeHead: src);
            if (dst < 0 || _slabs.TakeSlotsLocked(cls, dst, one, 1) != 1) break;
            batch.Add(live[i].index, live[i].state, live[i].slot, one[0]);
            if (_tried.Add(dst)) _filling.Add(dst);
        }
        _sources.Add((src, first, batch.Count, live.Count));
        return batch.Count - first < live.Count ? SourceStep.NoRoom : SourceStep.Added;
    }

    private static bool AllMoved(MigrationBatch batch, int first, int end)
    {
        for (int i = first; i < end; i++)
            if (batch[i].Result != MigrateResult.Success) return false;
        return true;
    }
}
