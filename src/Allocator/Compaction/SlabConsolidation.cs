using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// Slab consolidation (zs_compact): the lowest part-used slabs of a class move into its highest ones with free slots.
internal sealed class SlabConsolidation
{
    private readonly CompactionContext _cx;
    private readonly SlabAllocator _slabs;
    private readonly SlabMover _mover;
    private readonly List<int> _order = [];      // the class's slabs by address, when its consolidation began in this call
    private bool _ordered;                          // _order holds the current class's slabs
    private int _lo, _hi;                           // next source (up from the bottom) and destination (down from the top)

    public SlabConsolidation(CompactionContext cx, SlabMover mover)
    {
        _cx = cx;
        _slabs = cx.Slabs;
        _mover = mover;
    }

    /// <summary>
    /// For every movable size class: while zs_can_compact is above zero and the fingers have not met, move the blocks
    /// of the lowest part-used slab into the highest slabs with free slots and free it (see <see cref="ConsolidateOne"/>).
    /// A slab whose slots sit in a thread cache is skipped (cache-held failure).
    /// </summary>
    public void ConsolidateSlabs(CompactControl cc)
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        cc.StartTicks = cc.StartTicks == 0 ? _cx.Options.Clock.GetTimestamp() : cc.StartTicks;
        foreach (SlabClass cls in _slabs.Class)
        {
            _ordered = false;
            _wayCount = 0;
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
    /// <summary>
    /// One step of zs_compact for a class, as one unit of work: source slabs are isolated and their blocks given
    /// slots in destination slabs (never a new slab) until the batch holds <see cref="UnitMover.MaxBlocks"/> blocks
    /// or a pageblock's worth of source pages, or the class has nothing more to give; then the batch migrates under
    /// one barrier and every source is settled (freed when emptied). Returns false when the class is done.
    /// </summary>
    /// <remarks>
    /// Sources and destinations are taken in address order, two fingers over the class's slabs (see
    /// <see cref="OrderSlabsLocked"/>): the lowest part-used slab is the next source, the highest slab with a free
    /// slot the next destination, and the class is done when they meet (or zs_can_compact is zero). The blocks thus
    /// gather in the class's highest slabs, the ones the zone pass that follows leaves where they are (it moves what
    /// lies below where its scanners meet, toward the top): a block consolidation moved is not copied again by it, as
    /// it was when the fullest slab (wherever it lay) was the destination (native-layout.md, section 9, "Move
    /// once"). A destination is never a source of the same call (it lies above the source finger).
    /// </remarks>
    private bool ConsolidateOne(CompactControl cc, SlabClass cls)
    {
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        MigrationBatch batch = _cx.Batch;
        batch.Clear();
        _sources.Clear();
        bool more = true;
        if (!_cx.Acquire(cls.Lock, cc)) return false;
        try
        {
            while (batch.Count < UnitMover.MaxBlocks && _sources.Count * pages < _cx.Map.PageblockPages)
            {
                if (_slabs.CanCompactLocked(cls) <= 0) { more = false; break; }
                if (cc.Daemon && !WorthConsolidating(cls.Slabs, cls.UsedSlots, _slabs.Classes.SlotsPerSlab[cls.Index])) { more = false; break; }
                if (!_ordered) { OrderSlabsLocked(cls); _ordered = true; }
                int src = NextSourceLocked(cls);
                if (src < 0) { more = false; break; }
                int refs = _mover.ListLiveBlocksLocked(cls, src);
                List<(uint index, long state, nint slot)> live = _mover.Live;
                if (refs != live.Count)
                {
                    _cx.Counters[CacheHeldFailures]++;
                    continue;
                }
                // Room first: once the source is isolated and a destination slot taken, an Add that failed to grow the
                // batch would leave both for good (the settling below, which frees them, would never see them).
                batch.EnsureRoom(live.Count);
                _sources.EnsureCapacity(_sources.Count + 1);
                _slabs.IsolateLocked(cls, src);
                int first = batch.Count;
                // Destination slots from the highest slabs, never a new slab; one slot at a time from each of the
                // open ways in turn (see DestinationWays).
                for (int i = 0; i < live.Count; i++)
                {
                    if (!TakeDestinationSlotLocked(cls, out nint slot)) break;
                    batch.Add(live[i].index, live[i].state, live[i].slot, slot);
                }
                _sources.Add((src, first, batch.Count, live.Count));
                if (batch.Count - first < live.Count) { more = false; break; }   // the fingers met: no slot left above
            }
        }
        finally
        {
            cls.Lock.Exit();
        }
        if (_sources.Count == 0) return more;

        int moved = 0;
        try
        {
            moved = _cx.Migrate();
        }
        finally
        {
            // Settled even when the migration threw: it unfroze what it did not move, and the results say which moved.
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
                    // Blocks that failed stay in the source slab, which the source finger has passed; a later call retries them.
                    if (end - first == listed && AllMoved(batch, first, end)) _cx.Counters[PgmigrateSuccess] += pages;
                }
            }
        }
        return more;
    }

    /// <summary>Lists the class's slabs (every fullness group) in address order into <see cref="_order"/> and puts the
    /// source finger at the bottom and the destination finger at the top. A slab carved later is not listed (a later
    /// call sees it); one freed or re-carved since is recognised at use (see <see cref="IsSlabOf"/>). Caller holds
    /// the class lock.</summary>
    private void OrderSlabsLocked(SlabClass cls)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        _order.Clear();
        for (int g = 0; g < SlabAllocator.Groups; g++)
            for (int p = cls.GroupHeads[g]; p >= 0; p = _cx.Map.Page(p).Next) _order.Add(p);
        _order.Sort();
        _lo = 0;
        _hi = _order.Count - 1;
        _wayCount = 0;
        _way = 0;
    }

    /// <summary>The next source: the lowest listed slab below the destination finger that is a slab of the class, on
    /// its lists and part-used; the finger moves past it. -1 when the fingers met. Caller holds the class lock.</summary>
    private int NextSourceLocked(SlabClass cls)
    {
        int capacity = _slabs.Classes.SlotsPerSlab[cls.Index];
        for (; _lo <= _hi; _lo++)
        {
            int head = _order[_lo];
            ref PageDescriptor d = ref _cx.Map.Page(head);
            if (!IsSlabOf(cls, head) || d.RefCount == 0 || d.RefCount == capacity) continue;
            _lo++;
            return head;
        }
        return -1;
    }

    /// <summary>The next destination: the highest listed slab at or below the destination finger and above the source
    /// finger that is a slab of the class, on its lists and not full; the finger moves below it. -1 when the fingers
    /// met. Caller holds the class lock.</summary>
    private int NextDestinationLocked(SlabClass cls)
    {
        int capacity = _slabs.Classes.SlotsPerSlab[cls.Index];
        for (; _hi >= _lo; _hi--)
        {
            int head = _order[_hi];
            if (!IsSlabOf(cls, head) || _cx.Map.Page(head).RefCount >= capacity) continue;
            _hi--;
            return head;
        }
        return -1;
    }

    /// <summary>
    /// Takes one destination slot, from the open ways in turn (<see cref="DestinationWays"/> of the highest slabs
    /// with free slots, refilled from the destination finger as they fill up or stop being usable). False when no
    /// destination is left above the source finger. Caller holds the class lock.
    /// </summary>
    /// <remarks>
    /// A part-used slab hands out its free slots by popping its free-slot list, a chain of dependent loads through
    /// the slots' memory: one cache miss after another, the largest cost of consolidation when slabs were freed at
    /// random. Taking turns between several slabs keeps that many independent chains in flight, so their misses
    /// overlap. (The miss is not wasted: the copy writes the slot next.)
    /// </remarks>
    private bool TakeDestinationSlotLocked(SlabClass cls, out nint slot)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        int capacity = _slabs.Classes.SlotsPerSlab[cls.Index];
        Span<nint> one = stackalloc nint[1];
        while (true)
        {
            while (_wayCount < DestinationWays)
            {
                int next = NextDestinationLocked(cls);
                // Once the fingers met, a kept empty slab of the class is the last resort, wherever it lies (as the
                // fullest-first choice also took one last): every listed slab is then below the source finger, so it
                // is never listed as a source in this call.
                if (next < 0 && _wayCount == 0) next = cls.GroupHeads[SlabAllocator.EmptyGroup];
                if (next < 0) break;
                _ways[_wayCount++] = next;
            }
            if (_wayCount == 0) { slot = 0; return false; }
            if (_way >= _wayCount) _way = 0;
            int head = _ways[_way];
            // A way may have filled up (mutators allocate from it between batches) or been freed since it was opened.
            if (IsSlabOf(cls, head) && _cx.Map.Page(head).RefCount < capacity && _slabs.TakeSlotsLocked(cls, head, one, 1) == 1)
            {
                slot = one[0];
                if (_cx.Map.Page(head).RefCount == capacity) CloseWay(_way);
                else _way++;
                return true;
            }
            CloseWay(_way);
        }
    }

    /// <summary>Destination slabs filled in turn (see <see cref="TakeDestinationSlotLocked"/>).</summary>
    private const int DestinationWays = 4;
    private readonly int[] _ways = new int[DestinationWays];
    private int _wayCount, _way;

    private void CloseWay(int w)
    {
        _ways[w] = _ways[--_wayCount];
    }

    /// <summary>True when page <paramref name="head"/> is still the head of a movable slab of the class, on its lists
    /// (not isolated). Caller holds the class lock, under which slabs of the class are carved, freed and
    /// isolated.</summary>
    private bool IsSlabOf(SlabClass cls, int head)
    {
        ref PageDescriptor d = ref _cx.Map.Page(head);
        return d.Kind == PageKind.SlabHead && d.IsMovableSlabOf(cls.Index) && !d.SlabIsolated;
    }

    private static bool AllMoved(MigrationBatch batch, int first, int end)
    {
        for (int i = first; i < end; i++)
            if (batch[i].Result != MigrateResult.Success) return false;
        return true;
    }
}
