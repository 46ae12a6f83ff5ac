using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The migrate scanner's unit of work (native-layout.md, section 9, "Units of work and barriers"): the runs and
/// slabs one pageblock isolated, in address order, each given its destination (a run: free pages from the free
/// scanner; a slab: a new slab of its class carved from them, every live block a slot in it), then migrated in one
/// batch, so that one process-wide barrier and one pin-slot snapshot serve them all and the copies run in address
/// order; then each is settled (moved sources freed, unused destinations back to the pool). A batch is cut at
/// <see cref="MaxBlocks"/> blocks, which bounds what a mutator meeting a frozen block waits for: the copies of at most
/// one pageblock's units and <see cref="MaxBlocks"/> blocks, after one barrier; under a time budget (a slice) it is
/// cut sooner, where its work would pass the budget. Its lists are scratch space protected by RunLock.
/// </summary>
internal sealed unsafe class UnitMover
{
    /// <summary>Blocks one batch holds at most (the unit of work of a pageblock of small blocks is cut there).</summary>
    public const int MaxBlocks = 4096;

    private readonly CompactionContext _cx;
    private readonly PageMap _map;
    private readonly Zone _zone;
    private readonly SlabAllocator _slabs;
    private readonly FreeScanner _free;
    private readonly SlabMover _mover;
    private readonly MigrationBatch _batch;
    private readonly List<Move> _moves = [];   // the units of the current batch, in batch order

    /// <summary>One unit of the batch: a run (<see cref="Class"/> null) or a slab, its destination, and its
    /// blocks' items [<see cref="First"/>, <see cref="End"/>) in the batch.</summary>
    private struct Move
    {
        public int Head;
        public int Dst;
        public int Pages;
        public SlabClass? Class;
        public int First;
        public int End;
    }

    public UnitMover(CompactionContext cx, FreeScanner free, SlabMover mover)
    {
        _cx = cx;
        _map = cx.Map;
        _zone = cx.Zone;
        _slabs = cx.Slabs;
        _free = free;
        _mover = mover;
        _batch = cx.Batch;
    }

    /// <summary>
    /// Moves the units <paramref name="heads"/> (run and slab heads of one pageblock, in address order): one batch
    /// per <see cref="MaxBlocks"/> blocks, one barrier each; under a time budget a batch also ends once it would take
    /// the run past its budget (<see cref="CompactionContext.BatchFillsBudget"/>), and no further batch starts once the
    /// budget is spent. Adds a result per unit tried (none for the units left when an asynchronous run met a
    /// contended lock or the budget ran out). Returns how many units from the start of <paramref name="heads"/> were
    /// tried: all of them unless the run stopped early. Caller holds RunLock and no other lock.
    /// </summary>
    public int MoveUnits(CompactControl cc, List<int> heads, int migratePb, ref int freePb, List<(int head, MigrateResult result)> results)
    {
        results.EnsureCapacity(results.Count + heads.Count);
        int next = 0;
        while (next < heads.Count && !cc.Contended)
        {
            next = MoveBatch(cc, heads, next, migratePb, ref freePb, results);
            cc.Worked = true;   // a unit of work done: the time budget may stop the run from here on
            if (!cc.WholeBatches && _cx.BudgetSpent(cc)) break;
        }
        return next;
    }

    /// <summary>Prepares units from <paramref name="next"/> on until the batch holds <see cref="MaxBlocks"/> blocks
    /// or fills the run's time budget, migrates them together and settles them. Returns the first unit not prepared
    /// (at least one is).</summary>
    private int MoveBatch(CompactControl cc, List<int> heads, int next, int migratePb, ref int freePb, List<(int head, MigrateResult result)> results)
    {
        _cx.BeginBatch();
        _moves.Clear();
        // Room first: after a unit is prepared its destination is taken, and an Add that failed to grow a list would
        // strand it; the finally below adds a result per unit prepared, into room made by MoveUnits.
        _moves.EnsureCapacity(heads.Count - next);
        try
        {
            // Inside the try: a later unit's preparation may throw (the free scanner's pool failing to grow) while the
            // earlier ones hold their destinations, which the finally then gives back (their results are Busy).
            for (; next < heads.Count && _batch.Count < MaxBlocks && !cc.Contended && !_cx.BatchFillsBudget(cc); next++)
            {
                int head = heads[next];
                MigrateResult r = _map.Page(head).Kind == PageKind.RunHead
                    ? PrepareRun(cc, head, migratePb, ref freePb)
                    : PrepareSlab(cc, head, migratePb, ref freePb);
                if (r != MigrateResult.Success || _moves.Count == 0 || _moves[^1].Head != head) results.Add((head, r));
            }
            if (_batch.Count > 0) _cx.Migrate();
        }
        finally
        {
            // Even when the migration (or a later unit's preparation) threw: moved units free their source, the others
            // their destination.
            foreach (Move m in _moves) results.Add((m.Head, Settle(m)));
        }
        return next;
    }

    /// <summary>Validates a run by its entry, gives it destination pages (descriptors written, naming the entry) and
    /// queues it. Success with a move queued means ready to migrate.</summary>
    private MigrateResult PrepareRun(CompactControl cc, int head, int migratePb, ref int freePb)
    {
        ref PageDescriptor d = ref _map.Page(head);
        uint index = d.RunHandle;
        if (!_cx.Handles.Owns(index)) return MigrateResult.Gone;   // not an entry of this heap: no run recorded here
        HandleEntry* e = _cx.Handles.Get(index);
        // The descriptor was read without a lock and may describe an older run at this page: the entry decides,
        // seqlock-style (state, address, page count, state again).
        long s = Volatile.Read(ref e->State);
        nint address = Volatile.Read(ref e->Address);
        int pages = d.RunPages;
        if ((s & (EntryState.Allocated | EntryState.Run | EntryState.Movable)) != (EntryState.Allocated | EntryState.Run | EntryState.Movable)
            || address != _map.AddressOf(head) || Volatile.Read(ref e->State) != s || pages <= 0) return MigrateResult.Gone;
        // pages came from the descriptor without a lock: the migrator confirms it under the freeze (a destination of
        // another length is void), so a stale value costs a failed attempt, never a short copy.
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;
        if (pages > 1 << _map.MaxOrder) return MigrateResult.NotMovable; // multi-pageblock runs stay (see native-layout.md)

        _batch.EnsureRoom(1);   // before the destination is taken
        _cx.RunDestinationWanted?.Invoke();
        int dst = _free.CompactionAlloc(cc, pages, migratePb, ref freePb);
        if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
        if (!_cx.Acquire(_zone.Lock, cc)) { _free.PutBack(dst, pages); return MigrateResult.Busy; }   // nothing written yet
        _cx.Pages.InitRunLocked(_zone, dst, pages, index);
        _zone.Lock.Exit();
        _moves.Add(new Move { Head = head, Dst = dst, Pages = pages, First = _batch.Count, End = _batch.Count + 1 });
        _batch.Add(index, s, _map.AddressOf(head), _map.AddressOf(dst));
        _cx.Queued(1, (long)pages << _map.PageShift);
        return MigrateResult.Success;
    }

    /// <summary>
    /// Prepares a whole slab's move into a new slab carved from free pages of the free scanner. Under the class lock:
    /// validate, list the live blocks, require that no thread cache holds a slot (RefCount equal to the live blocks;
    /// else a cache-held failure), carve the destination, isolate both, and queue every live block with its new slot.
    /// An empty slab is released at once (Success with nothing queued).
    /// </summary>
    private MigrateResult PrepareSlab(CompactControl cc, int head, int migratePb, ref int freePb)
    {
        ref PageDescriptor d = ref _map.Page(head);
        if (d.Kind != PageKind.SlabHead || d.SlabKind != BlockKind.Movable) return MigrateResult.Gone;
        SlabClass cls = _slabs.Class[d.SlabClass];
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        // A target first, before the class lock and the listing of its blocks: a slab with no free range of its size
        // is left at once (CompactionAlloc below then takes the range the pool holds).
        if (!_free.IsolateTargets(cc, pages, migratePb, ref freePb)) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
        if (!_cx.Acquire(cls.Lock, cc)) return MigrateResult.Busy;
        try
        {
            if (!d.IsMovableSlabOf(cls.Index) || d.Kind != PageKind.SlabHead || d.SlabIsolated)
                return MigrateResult.Gone;
            if (d.RefCount == 0)
            {
                _slabs.ReleaseSlabLocked(cls, head);   // an empty slab: nothing to move
                _cx.Counters[LockAcquisitions]++;       // the zone lock inside
                _cx.Counters[PgmigrateSuccess] += pages;
                return MigrateResult.Success;
            }
            int refs = _mover.ListLiveBlocksLocked(cls, head);
            List<(uint index, long state, nint slot)> live = _mover.Live;
            if (refs != live.Count)
            {
                _cx.Counters[CacheHeldFailures]++;
                return MigrateResult.CacheHeld;
            }
            // Every managed allocation before the destination is taken: once the slabs are isolated, nothing may throw.
            Span<nint> dstSlots = live.Count <= 1024 ? stackalloc nint[live.Count] : new nint[live.Count];
            _batch.EnsureRoom(live.Count);
            int dst = _free.CompactionAlloc(cc, pages, migratePb, ref freePb);
            if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
            if (!_cx.Acquire(_zone.Lock, cc)) { _free.PutBack(dst, pages); return MigrateResult.Busy; }   // nothing written yet
            _slabs.InitIsolatedSlabLocked(cls, _zone, dst);
            _zone.Lock.Exit();
            _slabs.IsolateLocked(cls, head);
            int got = _slabs.TakeSlotsLocked(cls, dst, dstSlots, live.Count);
            Debug.Assert(got == live.Count, "a fresh slab holds every block of a slab of its class");
            _moves.Add(new Move { Head = head, Dst = dst, Pages = pages, Class = cls, First = _batch.Count, End = _batch.Count + got });
            for (int i = 0; i < got; i++) _batch.Add(live[i].index, live[i].state, live[i].slot, dstSlots[i]);
            _cx.Queued(got, (long)got * _slabs.Classes.Size[cls.Index]);
            return MigrateResult.Success;
        }
        finally
        {
            cls.Lock.Exit();
        }
    }

    /// <summary>After the batch: a moved run frees its source, another gives its destination back to the pool; a
    /// slab frees the source slot of each moved block and the destination slot of each that stayed, and both slabs
    /// are put back (each released when empty). Returns the unit's result: Success when every block moved, else the
    /// first failure that is not Gone, else Busy (the remaining blocks were freed or moved by someone else: look
    /// again).</summary>
    private MigrateResult Settle(in Move m)
    {
        if (m.Class == null)
        {
            MigrateResult r = _batch[m.First].Result;
            if (r == MigrateResult.Success)
            {
                _free.FreePages(m.Head, m.Pages);
                _cx.Counters[PgmigrateSuccess] += m.Pages;
            }
            else
            {
                _free.ReturnToPool(m.Dst, m.Pages);
            }
            return r;
        }
        SlabClass cls = m.Class;
        lock (cls.Lock)
        {
            _cx.Counters[LockAcquisitions]++;
            _mover.ReleaseBatchSlotsLocked(cls, m.First, m.End);
            if (_slabs.PutbackLocked(cls, m.Head, releaseIfEmpty: true)) _cx.Counters[LockAcquisitions]++;
            _slabs.PutbackLocked(cls, m.Dst, releaseIfEmpty: true);
        }
        MigrateResult failed = MigrateResult.Success;
        for (int i = m.First; i < m.End; i++)
        {
            MigrateResult r = _batch[i].Result;
            if (r == MigrateResult.Success) continue;
            if (r != MigrateResult.Gone) return r;
            failed = MigrateResult.Busy;
        }
        if (failed == MigrateResult.Success) _cx.Counters[PgmigrateSuccess] += m.Pages;
        return failed;
    }
}
