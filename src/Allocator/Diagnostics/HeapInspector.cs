using System.Diagnostics;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Pins;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Diagnostics;

/// <summary>The parts of one heap the statistics and the maps read (the heap builds them; this layer reads them).</summary>
internal sealed record InspectedParts(
    long Id, ArenaMemory Memory, PageMap Map, PageAllocator Pages, SizeClasses Classes, SlabAllocator[] Slabs,
    HandleTable Handles, ThreadCaches Caches, Migrator Migrator, Compactor? Compactor, CompactionCounters Counters,
    LongTermPinCounts LongTermPins, BackgroundFailures BackgroundFailures, long MemoryLimit, TimeProvider Clock);

/// <summary>
/// The walks behind a heap's statistics, its arena map and its page map, and the metrics' cached snapshot: each reads
/// the layers below under their own locks (a zone's, a size class's) and under the statistics lock, which
/// <see cref="Close"/> takes, so that no walk reads metadata a Dispose (or the finalizer) is freeing.
/// </summary>
/// <remarks>Lock ordering: the statistics lock first, then one zone lock or one class lock at a time (leaves). The
/// metrics collection (<see cref="HeapMetrics"/>) holds its own lock around <see cref="MetricsSnapshot"/>, taken
/// before this one.</remarks>
internal sealed unsafe class HeapInspector(InspectedParts parts)
{
    private readonly InspectedParts _p = parts;
    private readonly Lock _statsLock = new();
    private bool _closed;   // guarded by _statsLock

    private HeapStatistics? _metricsSnapshot;      // guarded by HeapMetrics' lock
    private (int slot, int atomic) _metricsPins;   // guarded by HeapMetrics' lock
    private long _metricsSnapshotAt;               // the clock's timestamp of _metricsSnapshot; HeapMetrics' lock

    /// <summary>The heap's id (the metrics' heap tag).</summary>
    public long Id => _p.Id;

    /// <summary>True once <see cref="Close"/> ran (a racy read for the metrics' list: a snapshot re-checks under the lock).</summary>
    public bool IsClosed => Volatile.Read(ref _closed);

    /// <summary>Marks the heap gone, waiting for a walk in progress to end: called by Dispose before it frees the
    /// metadata, and by the finalizer. Takes the statistics lock.</summary>
    public void Close()
    {
        lock (_statsLock) Volatile.Write(ref _closed, true);
    }

    /// <summary>A snapshot of memory use, free lists and slab occupancy. Takes the statistics lock.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapStatistics Statistics()
    {
        lock (_statsLock)
        {
            if (_closed) ThrowHelper.Disposed();
            return StatisticsLocked();
        }
    }

    /// <summary>The compaction and reclaim counters now, as their public snapshot (racy reads; see
    /// <see cref="CompactionCounters"/>). Lock-free.</summary>
    public CompactionStatistics Counters() => new(_p.Counters.Read());

    private HeapStatistics StatisticsLocked()
    {
        PageMap map = _p.Map;
        var zones = new List<ZoneStatistics>();
        foreach (Zone z in _p.Pages.Zones)
        {
            int orders = z.MaxOrder + 1;
            var free = new long[orders * 2];
            var pageblocks = new int[2];
            long freePages;
            int firstPb, frontierPb;
            lock (z.Lock)
            {
                for (int o = 0; o < orders; o++)
                    for (int t = 0; t < 2; t++) free[o * 2 + t] = z.FreeBlocks(o, (MigrateType)t);
                freePages = z.FreePages;
                (firstPb, frontierPb) = z.UsedPageblocks;
            }
            // Below the frontier each pageblock has its type bits; above it every pageblock is of the zone's type.
            for (int pb = firstPb; pb < frontierPb; pb++) pageblocks[(int)map.GetMigrateType(pb)]++;
            pageblocks[(int)z.InitialType] += (z.End >> map.PageblockOrder) - frontierPb;
            zones.Add(new ZoneStatistics(z.Kind.ToString(), z.PageCount, freePages, orders, free, pageblocks));
        }
        SizeClasses sizes = _p.Classes;
        var classes = new List<SlabClassStatistics>();
        foreach (SlabAllocator slabs in _p.Slabs)
            foreach (SlabClass cls in slabs.Class)
            {
                long n, used;
                lock (cls.Lock) { n = cls.Slabs; used = cls.UsedSlots; }
                if (n == 0) continue;
                int c = cls.Index;
                classes.Add(new SlabClassStatistics(slabs.Kind, sizes.Size[c], sizes.PagesPerSlab[c], sizes.SlotsPerSlab[c], n, used));
            }
        ArenaMemory memory = _p.Memory;
        ThreadCaches caches = _p.Caches;
        LongTermPinCounts longTerm = _p.LongTermPins;
        (long liveBytes, long liveBlocks) = caches.LiveTotals();
        return new HeapStatistics
        {
            LiveBytes = liveBytes,
            LiveBlocks = liveBlocks,
            CommittedBytes = memory.CommittedBytes,
            ReservedBytes = memory.ReservedBytes,
            DecommittedBytes = memory.DecommittedBytes,
            PurgedBytes = memory.PurgedBytes,
            PurgedFreeBytes = _p.Pages.PurgedFreeBytes,
            SmallPagePageblocks = memory.SmallPagePageblocks,
            LongTermPins = Volatile.Read(ref longTerm.Held),
            LongTermPinMigrations = Volatile.Read(ref longTerm.Migrations),
            LongTermPinBytesMoved = Volatile.Read(ref longTerm.BytesMoved),
            LongTermPinFailures = Volatile.Read(ref longTerm.Failures),
            DecommitFailures = memory.DecommitFailures,
            CommitFailures = memory.CommitFailures,
            MemoryLimit = _p.MemoryLimit,
            MemoryLimitCommitRefusals = memory.LimitRefusals,
            AdviceFailures = memory.AdviceFailures,
            BackgroundFailures = _p.BackgroundFailures.Count,
            LastBackgroundFailure = _p.BackgroundFailures.Last,
            UseAfterFreeDetections = _p.Pages.Poison.Detections,
            HandleTableGrowthFailures = _p.Handles.GrowthFailures,
            MetadataBytes = _p.Pages.MetadataBytes + _p.Handles.MetadataBytes,
            PageSize = map.PageSize,
            PageblockPages = map.PageblockPages,
            BlocksMigrated = _p.Migrator.BlocksMigrated,
            BytesMigrated = _p.Migrator.BytesMigrated,
            CachedSlots = caches.CachedSlots(),
            CachedRuns = caches.CachedRuns(),
            Compaction = Counters(),
            FragmentationScore = _p.Compactor?.Score() ?? 0,
            Zones = zones,
            SlabClasses = classes,
        };
    }

    /// <summary>The pins held, for the metrics: taken with the snapshot (<see cref="MetricsSnapshot"/>). Caller holds
    /// HeapMetrics' lock.</summary>
    public (int slot, int atomic) MetricsPins
    {
        get
        {
            Debug.Assert(HeapMetrics.LockHeldByCurrentThread, "caller holds HeapMetrics' lock");
            return _metricsPins;
        }
    }

    /// <summary>A statistics snapshot for one metrics collection: reused while younger than <paramref name="maxAge"/>
    /// on the heap's clock. Caller holds HeapMetrics' lock; takes the statistics lock.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapStatistics MetricsSnapshot(TimeSpan maxAge)
    {
        Debug.Assert(HeapMetrics.LockHeldByCurrentThread, "caller holds HeapMetrics' lock");
        long now = _p.Clock.GetTimestamp();
        if (_metricsSnapshot == null || _p.Clock.GetElapsedTime(_metricsSnapshotAt, now) > maxAge)
        {
            lock (_statsLock)
            {
                if (_closed) ThrowHelper.Disposed();
                _metricsSnapshot = StatisticsLocked();
                _metricsPins = PinCensus.CountByKind(_p.Handles);
            }
            _metricsSnapshotAt = now;
        }
        return _metricsSnapshot;
    }

    /// <summary>
    /// Each pageblock below the zones' frontiers with its migrate type, commit state, occupancy and pinned pages, for
    /// <see cref="ArenaMap.Svg"/>. Each pageblock is read under its zone's lock; the walk does not stop the heap, so
    /// the map shows it as it was during the walk. Takes the statistics lock, then each zone's.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public ArenaMap WalkArena(string title)
    {
        var views = new List<PageblockView>();
        PageMap map = _p.Map;
        lock (_statsLock)
        {
            if (_closed) ThrowHelper.Disposed();
            int pbPages = map.PageblockPages;
            foreach (Zone z in _p.Pages.Zones)
            {
                (int first, int end) = z.UsedPageblocks;
                for (int pb = first; pb < end; pb++)
                {
                    double used;
                    int pinned, pinnedUnmovable;
                    lock (z.Lock) (used, pinned, pinnedUnmovable) = PageblockOccupancyLocked(z, pb);
                    views.Add(new PageblockView(pb, z.Kind.ToString(), map.GetMigrateType(pb), _p.Memory.IsCommitted(pb), used, pinned, pbPages, pinnedUnmovable));
                }
            }
        }
        return new ArenaMap(views, title);
    }

    /// <summary>Pages of pageblock <paramref name="pb"/> in use (a slab's pages weighted by its occupancy) and its
    /// pinned pages of movable and unmovable blocks. Caller holds the zone's lock <paramref name="z"/> (descriptors
    /// of its pages do not change under it; pin counts are racy reads, for a picture).</summary>
    private (double used, int pinned, int pinnedUnmovable) PageblockOccupancyLocked(Zone z, int pb)
    {
        Debug.Assert(z.Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        PageMap map = _p.Map;
        SizeClasses sizes = _p.Classes;
        int pbPages = map.PageblockPages, start = pb * pbPages;
        double used = 0;
        int pinned = 0, pinnedUnmovable = 0;
        for (int p = start; p < start + pbPages;)
        {
            ref PageDescriptor d = ref map.Page(p);
            switch (d.Kind)
            {
                case PageKind.FreeHead:
                    p += 1 << d.Order;
                    continue;
                case PageKind.RunHead:
                    {
                        int n = Math.Min(d.RunPages, start + pbPages - p);
                        used += n;
                        if (Volatile.Read(ref d.PinCount) > 0)
                        {
                            if (RunIsMovable(d)) pinned += n;
                            else pinnedUnmovable += n;
                        }
                        p += n;
                        continue;
                    }
                case PageKind.SlabHead:
                    {
                        int n = Math.Min(sizes.PagesPerSlab[d.SlabClass], start + pbPages - p);
                        used += n * (double)d.RefCount / sizes.SlotsPerSlab[d.SlabClass];
                        // A slot's atomic pins are counted on the page its block starts on.
                        bool anyPinned = false;
                        for (int q = p; q < p + n; q++) anyPinned |= Volatile.Read(ref map.Page(q).PinCount) > 0;
                        if (anyPinned)
                        {
                            if (d.SlabKind == BlockKind.Movable) pinned += n;
                            else pinnedUnmovable += n;
                        }
                        p += n;
                        continue;
                    }
                case PageKind.Tail:
                    // The part of a run or slab that began in the pageblock before: counted as in use.
                    used++;
                    p++;
                    continue;
                default:
                    p++;
                    continue;
            }
        }
        return (used, pinned, pinnedUnmovable);
    }

    /// <summary>A run head's block is movable: its handle entry says so (a racy read of the state word, for a picture).</summary>
    private static bool RunIsMovable(in PageDescriptor d) => (Volatile.Read(ref HandleStore.Get(d.RunHandle)->State) & EntryState.Movable) != 0;

    /// <summary>
    /// Page by page, <paramref name="count"/> pageblocks from <paramref name="firstPageblock"/> on (below the zones'
    /// frontiers), for <see cref="ArenaMap.PageSvg"/>: what each page holds, its occupancy and its pins. Read under
    /// each zone's lock, a pageblock at a time, like <see cref="WalkArena"/>. Takes the statistics lock.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the arena.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public IReadOnlyList<PageView> WalkPages(int firstPageblock, int count)
    {
        PageMap map = _p.Map;
        if (firstPageblock < 0 || count < 0 || (long)firstPageblock + count > map.PageblockCount)
            throw new ArgumentOutOfRangeException(nameof(firstPageblock), $"pageblocks {firstPageblock}..{firstPageblock + count} are not all in the arena ({map.PageblockCount}).");
        var views = new List<PageView>();
        SizeClasses sizes = _p.Classes;
        lock (_statsLock)
        {
            if (_closed) ThrowHelper.Disposed();
            int pbPages = map.PageblockPages;
            for (int pb = firstPageblock; pb < firstPageblock + count; pb++)
            {
                Zone z = _p.Pages.ZoneOf(pb * pbPages);
                if (pb * pbPages >= z.Frontier) continue;
                bool committed = _p.Memory.IsCommitted(pb);
                MigrateType type = map.GetMigrateType(pb);
                lock (z.Lock)
                {
                    for (int p = pb * pbPages; p < (pb + 1) * pbPages; p++)
                    {
                        int head = map.HeadOf(p);
                        ref PageDescriptor d = ref map.Page(head);
                        (string kind, double occupancy, bool movable) = d.Kind switch
                        {
                            PageKind.RunHead => ("run", 1.0, RunIsMovable(d)),
                            PageKind.SlabHead => ("slab", (double)d.RefCount / sizes.SlotsPerSlab[d.SlabClass], d.SlabKind == BlockKind.Movable),
                            _ => ("free", 0.0, false),
                        };
                        // A run's pins are on its head; a slot's on the page its block starts on.
                        bool pinned = kind == "run" ? Volatile.Read(ref d.PinCount) > 0 : kind == "slab" && Volatile.Read(ref map.Page(p).PinCount) > 0;
                        views.Add(new PageView(p, kind, type, committed, occupancy, pinned, movable));
                    }
                }
            }
        }
        return views;
    }
}
