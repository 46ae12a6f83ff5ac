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
    private readonly ConsolidationCursor _scratch = new();   // the cursor of a run that does not resume
    private ConsolidationCursor _cursor;                      // the current run's: its class and tried slabs
    private HashSet<int> _tried => _cursor.Tried;            // slabs of the current class already tried as sources

    public SlabConsolidation(CompactionContext cx, SlabMover mover)
    {
        _cx = cx;
        _slabs = cx.Slabs;
        _mover = mover;
        _cursor = _scratch;
        _slots = new nint[_slabs.Classes.SlotsPerSlab.Max()];
    }

    /// <summary>
    /// For every movable size class: while zs_can_compact is above zero, move the blocks of the least-full slab
    /// into the fullest ones and free it. A slab whose slots sit in a thread cache is skipped (cache-held failure).
    /// A caller that works in slices passes its own <paramref name="cursor"/>: a call its budget stops midway resumes
    /// at the next call in the class it stopped in, with the slabs it tried there remembered, so that successive slices
    /// walk the classes instead of listing the same cache-held slabs of the first class every time. Without a cursor
    /// the run starts at the first class. Returns true when every class has been consolidated (the cursor starts
    /// over).
    /// </summary>
    public bool ConsolidateSlabs(CompactControl cc, ConsolidationCursor? cursor = null)
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        cc.StartTicks = cc.StartTicks == 0 ? _cx.Options.Clock.GetTimestamp() : cc.StartTicks;
        _cursor = cursor ?? _scratch;
        if (cursor == null) _scratch.Reset();
        SlabClass[] classes = _slabs.Class;
        for (; _cursor.Class < classes.Length; _cursor.Class++, _cursor.Tried.Clear())
        {
            while (true)
            {
                if (_cx.BudgetSpent(cc) || cc.Contended) return false;
                if (!ConsolidateOne(cc, classes[_cursor.Class])) break;
                cc.Worked = true;
            }
        }
        _cursor.Reset();
        return true;
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
    /// <summary>Destination slots taken for one source, and the slabs they lie in.</summary>
    private readonly nint[] _slots;
    private readonly List<int> _destinations = new(SlabAllocator.DestinationSlabs);

    /// <summary>
    /// One step of zs_compact for a class, as one unit of work: least-full slabs are isolated as sources and their
    /// blocks given slots in the fullest slabs (never a new slab) until the batch holds <see cref="UnitMover.MaxBlocks"/>
    /// blocks or a pageblock's worth of source pages, or what it holds fills the run's time budget, or the class has
    /// nothing more to give; then the batch migrates
    /// under one barrier and every source is settled (freed when emptied). Returns false when the class is done.
    /// </summary>
    private bool ConsolidateOne(CompactControl cc, SlabClass cls)
    {
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        MigrationBatch batch = _cx.Batch;
        _cx.BeginBatch();
        _sources.Clear();
        _filling.Clear();
        bool more = true;
        try
        {
            // The class lock is held for one source slab at a time (its listing, its isolation and its blocks'
            // destination slots: at most a slab's slots), not for the whole batch of up to MaxBlocks blocks, so that a
            // mutator allocating or freeing in the class waits for one slab's worth of this work at most. What the
            // batch holds between two holds is safe without the lock: its sources are isolated (off the fullness
            // lists, never released) and its destination slots are counted in their slabs' RefCount, so no mutator is
            // given them and no destination slab empties; a mutator may free a listed block meanwhile, as it may
            // during the migration. Under a time budget (a slice) the batch also stops once what it holds would take
            // the run past the budget (see BatchFillsBudget).
            while (batch.Count < UnitMover.MaxBlocks && _sources.Count * pages < _cx.Map.PageblockPages && !_cx.BatchFillsBudget(cc))
            {
                if (!_cx.Acquire(cls.Lock, cc))
                {
                    if (_sources.Count == 0) more = false;
                    break;
                }
                SourceStep step;
                try
                {
                    step = AddSourceLocked(cc, cls);
                }
                finally
                {
                    cls.Lock.Exit();
                }
                if (step == SourceStep.ClassDone) { more = false; break; }
                if (step == SourceStep.NoRoom) break;   // no slot left in the class for now: settle, then look again
                // Listing a slab that turns out cache-held costs a read of each of its slots' entries and queues
                // nothing: under a time budget, stop once the time is up (the slabs tried are remembered).
                if (step == SourceStep.CacheHeld && _cx.TimeSpent(cc)) break;
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
    private SourceStep AddSourceLocked(CompactControl cc, SlabClass cls)
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
        // Destination slots from the fullest slabs, their lines prefetched (see TakeFromFullestLocked); never carve a
        // new slab for this. A source's blocks fit in DestinationSlabs slabs unless the fullest are nearly full.
        Span<nint> slots = _slots;
        for (int i = 0; i < live.Count;)
        {
            _destinations.Clear();
            int got = _slabs.TakeFromFullestLocked(cls, src, slots, live.Count - i, _destinations);
            if (got == 0) break;
            for (int k = 0; k < got; k++, i++) batch.Add(live[i].index, live[i].state, live[i].slot, slots[k]);
            foreach (int dst in _destinations)
                if (_tried.Add(dst)) _filling.Add(dst);
        }
        _sources.Add((src, first, batch.Count, live.Count));
        _cx.Queued(batch.Count - first, (long)(batch.Count - first) * _slabs.Classes.Size[cls.Index]);
        return batch.Count - first < live.Count ? SourceStep.NoRoom : SourceStep.Added;
    }

    private static bool AllMoved(MigrationBatch batch, int first, int end)
    {
        for (int i = first; i < end; i++)
            if (batch[i].Result != MigrateResult.Success) return false;
        return true;
    }
}

/// <summary>Where a consolidation that works in slices resumes: the class it stopped in and the slabs it tried there.
/// Each caller that slices (the waste-driven run, the limit's slices, the daemon's pass) keeps its own, so that one
/// caller's progress (or the cache-held slabs it met with the caches on) never stands for another's. Protected by
/// RunLock.</summary>
internal sealed class ConsolidationCursor
{
    public int Class;
    public readonly HashSet<int> Tried = [];

    /// <summary>Starts over at the first class.</summary>
    public void Reset()
    {
        Class = 0;
        Tried.Clear();
    }
}
