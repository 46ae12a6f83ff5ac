using System.Diagnostics;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// Slab consolidation (zs_compact): the least-full slab of a class moves into the fullest ones.
internal sealed unsafe partial class Compactor
{
    private readonly HashSet<int> _tried = [];   // slabs of the class already tried as sources in this run

    /// <summary>
    /// For every movable size class: while zs_can_compact is above zero, move the blocks of the least-full slab
    /// into the fullest ones and free it. A slab whose slots sit in a thread cache is skipped (cache-held failure).
    /// </summary>
    public void ConsolidateSlabs(CompactControl cc)
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        cc.StartTicks = cc.StartTicks == 0 ? _options.Clock.GetTimestamp() : cc.StartTicks;
        foreach (SlabClass cls in _slabs.Class)
        {
            _tried.Clear();
            while (!BudgetSpent(cc) && !cc.Contended && ConsolidateOne(cc, cls)) { }
        }
    }

    /// <summary>
    /// Migrates <see cref="_batch"/> (blocks of slab <paramref name="src"/> of <paramref name="cls"/>, taken off the
    /// lists by the caller) and settles both slabs under the class lock: slots freed, the source put back (released
    /// when emptied), the destination slab <paramref name="dst"/> too when there is one (-1: none). Settled in a
    /// finally: a migration that throws has unfrozen what it did not move, and the batch's results say which moved.
    /// Caller holds RunLock and no class lock. Returns the blocks moved and whether the source was released.
    /// </summary>
    private (int moved, bool srcFreed) MigrateSlabBatch(SlabClass cls, int src, int dst)
    {
        int moved = 0;
        bool srcFreed;
        try
        {
            moved = Migrate(_batch);
        }
        finally
        {
            lock (cls.Lock)
            {
                Counters[LockAcquisitions]++;
                ReleaseBatchSlotsLocked(cls);
                srcFreed = _slabs.PutbackLocked(cls, src, releaseIfEmpty: true);
                if (srcFreed) Counters[LockAcquisitions]++;
                if (dst >= 0) _slabs.PutbackLocked(cls, dst, releaseIfEmpty: true);
            }
        }
        return (moved, srcFreed);
    }

    /// <summary>After a slab batch: the source slot of every moved block and the destination slot of every block
    /// that stayed are free again. Caller holds the class lock.</summary>
    private void ReleaseBatchSlotsLocked(SlabClass cls)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        for (int i = 0; i < _batch.Count; i++)
            _slabs.FreeSlotLocked(cls, _batch.Result[i] == MigrateResult.Success ? _batch.Src[i] : _batch.Dst[i]);
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
    private bool AnyClassWorthConsolidating()
    {
        foreach (SlabClass cls in _slabs.Class)
            if (WorthConsolidating(Volatile.Read(ref cls.Slabs), Volatile.Read(ref cls.UsedSlots), _slabs.Classes.SlotsPerSlab[cls.Index]))
                return true;
        return false;
    }

    /// <summary>One step of zs_compact for a class. Returns false when the class is done.</summary>
    private bool ConsolidateOne(CompactControl cc, SlabClass cls)
    {
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        int src;
        if (!Acquire(cls.Lock, cc)) return false;
        try
        {
            if (_slabs.CanCompactLocked(cls) <= 0) return false;
            if (cc.Daemon && !WorthConsolidating(cls.Slabs, cls.UsedSlots, _slabs.Classes.SlotsPerSlab[cls.Index])) return false;
            src = _slabs.FindLeastFullLocked(cls, _tried);
            if (src < 0) return false;
            _tried.Add(src);
            int refs = ListLiveBlocksLocked(cls, src);
            if (refs != _entries.Count)
            {
                Counters[CacheHeldFailures]++;
                return true;
            }
            // Room first: once the source is isolated and a destination slot taken, an Add that failed to grow the
            // batch would leave both for good (MigrateSlabBatch, which settles them, would never run).
            _batch.Clear();
            _batch.EnsureRoom(_entries.Count);
            _slabs.IsolateLocked(cls, src);
            // Destination slots from the fullest slabs; never carve a new slab for this.
            Span<nint> one = stackalloc nint[1];
            for (int i = 0; i < _entries.Count; i++)
            {
                int dst = _slabs.FindSlabLocked(cls, excludeHead: src);
                if (dst < 0 || _slabs.TakeSlotsLocked(cls, dst, one, 1) != 1) break;
                _batch.Add(_entries[i], _states[i], _slots[i], one[0]);
            }
        }
        finally
        {
            cls.Lock.Exit();
        }

        (int moved, bool srcFreed) = MigrateSlabBatch(cls, src, dst: -1);
        if (srcFreed) Counters[PagesCompacted] += pages;
        // Blocks that failed stay in the source slab, which is now marked tried; a later run retries them.
        Counters[PgmigrateSuccess] += moved == _batch.Count && _batch.Count == _entries.Count ? pages : 0;
        return true;
    }
}
