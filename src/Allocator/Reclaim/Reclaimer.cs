using Compaction.Allocator.Compaction;
using System.Diagnostics;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Reclaim;

/// <summary>What the reclaimer needs of the heap's options: how long a free pageblock waits before it is decommitted
/// (<c>DecommitDelay</c>), and the retained free bytes above which the background thread gives memory back at once
/// (<c>RetainedBytesLimit</c>; <see cref="long.MaxValue"/> for none).</summary>
internal sealed record ReclaimSettings(TimeSpan DecommitDelay, long RetainedBytesLimit);

/// <summary>
/// Gives free memory back to the OS so that resident memory follows live memory (native-layout.md, "Reclaim"):
/// the delayed trim the background thread runs (decommit pageblocks that stayed wholly free for
/// <see cref="HeapOptions.DecommitDelay"/>), and the explicit release (drain caches, free retained empty slabs,
/// decommit every wholly free pageblock, purge free runs inside pageblocks still in use).
/// </summary>
/// <remarks>
/// Lock ordering: <see cref="_trimLock"/> (a try-lock; a trim already running makes another one skip) comes before
/// the cache lock, class locks and zone locks, each taken one at a time.
/// </remarks>
internal sealed class Reclaimer
{
    /// <summary>Free runs shorter than 2^2 pages are left resident: purging them costs a system call per few pages
    /// and they are the first to be reused.</summary>
    public const int PurgeMinOrder = 2;

    private readonly ReclaimSettings _settings;
    private readonly PageAllocator _pages;
    private readonly ArenaMemory _memory;
    private readonly SlabAllocator[] _slabs;
    private readonly ThreadCaches _caches;
    private readonly CompactionCounters _counters;
    private readonly long _pageblockBytes;
    private readonly Lock _trimLock = new();
    private readonly Dictionary<int, long> _freeSince = [];   // committed pageblock -> when it was first seen wholly free
    private long _lastDecaySweep;                              // Trim's clock (ticks) at the last decay sweep; under _trimLock

    public Reclaimer(ReclaimSettings settings, PageAllocator pages, SlabAllocator[] slabs, ThreadCaches caches, CompactionCounters counters)
    {
        _settings = settings;
        _pages = pages;
        _memory = pages.Memory;
        _slabs = slabs;
        _caches = caches;
        _counters = counters;
        _pageblockBytes = (long)pages.Map.PageblockPages << pages.Map.PageShift;
    }

    /// <summary>
    /// Decommits pageblocks that have been wholly free for at least <see cref="HeapOptions.DecommitDelay"/>
    /// (hysteresis, like jemalloc's decay), so that resident memory follows live memory without thrashing when
    /// memory is freed and reused at once. A pageblock's clock restarts whenever it is seen in use. Free runs parked
    /// in thread caches and the depot age the same way: a trim first drains the caches when they hold a run, so the
    /// pages they held start their clock at this step (the caches refill on their next miss). Cached slab slots alone
    /// do not trigger it: they are bounded per thread and class, and an idle wake should leave the caches warm.
    /// Takes the trim lock (try-lock: returns 0 if a trim runs), the cache lock (a drain) and each zone lock in
    /// turn. Returns the bytes decommitted.
    /// </summary>
    public long Trim(TimeSpan now)
    {
        if (!_trimLock.TryEnter()) return 0;
        try
        {
            if (_caches.CachedRuns() > 0) _caches.Drain();
            long delay = _settings.DecommitDelay.Ticks, bytes = 0, nowTicks = Math.Max(1, now.Ticks);
            if (OverRetainedLimit())
            {
                // Above the cap nothing waits for its delay: every wholly free pageblock and every free run goes now.
                _freeSince.Clear();
                bytes = ReleaseEmptiedPageblocks() + PurgeFreeRuns();
                _lastDecaySweep = nowTicks;
                return bytes;
            }
            if (nowTicks - _lastDecaySweep >= delay)
            {
                bytes += DecaySweep();
                _lastDecaySweep = nowTicks;
            }
            long decommitted = 0;
            foreach (Zone z in _pages.Zones)
            {
                lock (z.Lock)
                {
                    // Pageblocks above the frontier were never committed: the walk ends there.
                    (int first, int end) = z.UsedPageblocks;
                    for (int pb = first; pb < end; pb++)
                    {
                        if (!_memory.IsCommitted(pb) || !z.IsPageblockFreeLocked(pb)) { _freeSince.Remove(pb); continue; }
                        if (!_freeSince.TryGetValue(pb, out long since)) { _freeSince[pb] = nowTicks; since = nowTicks; }
                        if (nowTicks - since < delay) continue;
                        _freeSince.Remove(pb);
                        if (DecommitLocked(z, pb)) decommitted += _pageblockBytes;
                    }
                }
            }
            Interlocked.Add(ref _counters[BytesDecommitted], decommitted);
            return bytes + decommitted;
        }
        finally
        {
            _trimLock.Exit();
        }
    }

    /// <summary>True when the free memory the heap keeps resident (its resident estimate less live bytes) is above
    /// <see cref="HeapOptions.RetainedBytesLimit"/>. Racy counters: a heuristic.</summary>
    public bool OverRetainedLimit() =>
        _settings.RetainedBytesLimit != long.MaxValue && _pages.ResidentBytesEstimate - _caches.LiveTotals().bytes > _settings.RetainedBytesLimit;

    /// <summary>
    /// The decay of free runs inside pageblocks still in use (the pageblocks that are wholly free have their own
    /// clock): a sweep every <see cref="HeapOptions.DecommitDelay"/> purges the free blocks of at least
    /// 2^<see cref="PurgeMinOrder"/> pages that were already free, untouched, at the sweep before (FreeAged), and
    /// marks the others aged. A block that is merged, split or allocated meanwhile is linked anew and loses its mark,
    /// so a free run is purged between one and two delays after it was last touched, and memory freed and reused at
    /// once is never purged. Takes each zone lock in turn. Returns the bytes purged.
    /// </summary>
    private long DecaySweep()
    {
        long bytes = 0;
        PageMap map = _pages.Map;
        foreach (Zone z in _pages.Zones)
        {
            lock (z.Lock)
            {
                HugifyDenseLocked(z);
                for (int o = PurgeMinOrder; o < map.PageblockOrder; o++)
                    foreach (MigrateType t in (ReadOnlySpan<MigrateType>)[MigrateType.Unmovable, MigrateType.Movable])
                        for (int p = z.FreeListHeadLocked(o, t); p >= 0; p = map.Page(p).Next)
                        {
                            ref PageDescriptor d = ref map.Page(p);
                            if (d.FreePurged || !_memory.IsCommitted(map.PageblockOf(p))) continue;
                            if (!d.FreeAged) { d.FreeAged = true; continue; }
                            bytes += PurgeLocked(z, p, o);
                        }
            }
        }
        return bytes;
    }

    /// <summary>Share of a small-page pageblock that must be in use before it gets its huge-page advice back (jemalloc's
    /// HPA hugifies at 95% full: a huge page over a sparse pageblock would make its free pages resident).</summary>
    public const double HugifyUsedShare = 0.95;

    /// <summary>Gives the huge-page advice back to the committed small-page pageblocks of <paramref name="z"/> that
    /// allocation or compaction made dense again (at least <see cref="HugifyUsedShare"/> in use); khugepaged may then
    /// collapse them. Caller holds the zone lock.</summary>
    private void HugifyDenseLocked(Zone z)
    {
        Debug.Assert(z.Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        if (_memory.SmallPagePageblocks == 0) return;
        int pages = _pages.Map.PageblockPages, maxFree = (int)(pages * (1 - HugifyUsedShare));
        (int first, int end) = z.UsedPageblocks;
        for (int pb = first; pb < end; pb++)
            if (_memory.UsesSmallPages(pb) && _memory.IsCommitted(pb) && z.FreePagesInPageblockLocked(pb) <= maxFree)
                _memory.UseHugePages(pb);
    }

    /// <summary>Purges free block <paramref name="head"/> of <paramref name="order"/> and marks it purged; caller holds
    /// its zone's lock. A refused purge is counted by the arena and leaves the pages resident (and unmarked): 0 bytes.</summary>
    private long PurgeLocked(Zone z, int head, int order)
    {
        Debug.Assert(z.Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        PageMap map = _pages.Map;
        nuint length = (nuint)(1 << order) << map.PageShift;
        // First out of khugepaged's reach, or it would collapse the pageblock and fault the purged pages back in.
        _memory.UseSmallPages(map.PageblockOf(head));
        if (!_memory.Purge(map.AddressOf(head), length)) return 0;
        z.MarkPurgedLocked(head);
        return (long)length;
    }

    /// <summary>
    /// Returns free memory to the OS now: drains the per-thread caches, frees the empty slabs each class keeps, then
    /// per zone decommits every wholly free committed pageblock and purges free runs of at least
    /// 2^<see cref="PurgeMinOrder"/> pages inside pageblocks still in use. Takes the cache lock, then class locks and
    /// zone locks one at a time. Returns the bytes decommitted or purged.
    /// </summary>
    public long ReleaseFreeMemory()
    {
        _caches.Drain();
        ReleaseEmptySlabs();
        long bytes = 0;
        foreach (Zone z in _pages.Zones)
        {
            bytes += DecommitFreePageblocks(z);
            bytes += PurgeFreeBlocks(z, PurgeMinOrder);
        }
        return bytes;
    }

    /// <summary>What a slice of a waste-driven background run gives back as it goes: the empty slabs classes keep and
    /// every wholly free committed pageblock, decommitted now (no delay: the run emptied them on purpose). No drain
    /// (the slice ran with the caches drained) and no purge (a system call per free run: that waits for the run's
    /// end, <see cref="ReleaseFreeMemory"/>). Returns the bytes decommitted.</summary>
    public long ReleaseEmptiedPageblocks()
    {
        ReleaseEmptySlabs();
        long bytes = 0;
        foreach (Zone z in _pages.Zones) bytes += DecommitFreePageblocks(z);
        Interlocked.Add(ref _counters[BytesDecommitted], bytes);
        return bytes;
    }

    /// <summary>Purges free runs of at least 2^<see cref="PurgeMinOrder"/> pages inside pageblocks still in use (the end of
    /// a waste-driven run). Takes each zone lock in turn. Returns the bytes purged.</summary>
    public long PurgeFreeRuns()
    {
        long bytes = 0;
        foreach (Zone z in _pages.Zones) bytes += PurgeFreeBlocks(z, PurgeMinOrder);
        return bytes;
    }

    /// <summary>Frees the empty slabs each class keeps for reuse. Takes each class lock in turn. Returns how many.</summary>
    public int ReleaseEmptySlabs()
    {
        int released = 0;
        foreach (SlabAllocator slabs in _slabs)
            foreach (SlabClass cls in slabs.Class)
                lock (cls.Lock)
                    while (cls.GroupHeads[SlabAllocator.EmptyGroup] >= 0)
                    {
                        slabs.ReleaseSlabLocked(cls, cls.GroupHeads[SlabAllocator.EmptyGroup]);
                        released++;
                    }
        return released;
    }

    /// <summary>Decommits every committed, wholly free pageblock of <paramref name="z"/>. Takes the zone lock.
    /// Returns the bytes decommitted.</summary>
    private long DecommitFreePageblocks(Zone z)
    {
        long bytes = 0;
        lock (z.Lock)
        {
            (int first, int end) = z.UsedPageblocks;   // above the frontier nothing was ever committed
            for (int pb = first; pb < end; pb++)
                if (_memory.IsCommitted(pb) && z.IsPageblockFreeLocked(pb) && DecommitLocked(z, pb)) bytes += _pageblockBytes;
        }
        return bytes;
    }

    /// <summary>Decommits one wholly free, committed pageblock; caller holds its zone's lock. False when the OS refused:
    /// the pageblock then stays committed and accounted, the refusal is counted (<see cref="ArenaMemory.DecommitFailures"/>),
    /// and a later release or trim tries again.</summary>
    private bool DecommitLocked(Zone z, int pb)
    {
        Debug.Assert(z.Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        return _memory.Decommit(pb);
    }

    /// <summary>
    /// Purges free blocks of at least <paramref name="minOrder"/> inside committed pageblocks that are not wholly free
    /// (those are decommitted whole): the pages between live blocks that a fragmented pageblock keeps resident, as
    /// jemalloc's page purging does. Blocks already purged (and untouched since) are skipped. Takes the zone lock.
    /// Returns the bytes purged (none on the portable back end).
    /// </summary>
    private long PurgeFreeBlocks(Zone z, int minOrder)
    {
        long bytes = 0;
        PageMap map = _pages.Map;
        lock (z.Lock)
        {
            // A free block of pageblock order or more spans wholly free pageblocks: those are the decommit's (one the
            // OS refused to decommit waits for the next release or trim), so only smaller blocks are purged.
            for (int o = minOrder; o < map.PageblockOrder; o++)
                foreach (MigrateType t in (ReadOnlySpan<MigrateType>)[MigrateType.Unmovable, MigrateType.Movable])
                    for (int p = z.FreeListHeadLocked(o, t); p >= 0; p = map.Page(p).Next)
                    {
                        // A block purged before and untouched since is not resident: no second system call.
                        if (map.Page(p).FreePurged || !_memory.IsCommitted(map.PageblockOf(p))) continue;
                        bytes += PurgeLocked(z, p, o);
                    }
        }
        return bytes;
    }
}
