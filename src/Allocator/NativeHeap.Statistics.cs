using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator;

// The statistics snapshot.
public sealed unsafe partial class NativeHeap
{
    /// <summary>A snapshot of memory use, free lists per order and migrate type, and slab occupancy.</summary>
    /// <remarks>Cost: a walk of every zone's free lists and every size class under their locks, and a managed
    /// snapshot object: microseconds to a millisecond or so with a large arena; not for a hot path (the metrics take
    /// one per collection).</remarks>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapStatistics GetStatistics()
    {
        // Under the statistics lock, which Dispose takes to mark the heap disposed: a snapshot never reads metadata
        // (the pageblock bitmap is native memory) that a Dispose on another thread is freeing, as a metrics listener's
        // collection may well race with one.
        lock (_statsLock)
        {
            if (_disposed) ThrowHelper.Disposed();
            return GetStatisticsLocked();
        }
    }

    private readonly Lock _statsLock = new();

    private HeapStatistics GetStatisticsLocked()
    {
        var zones = new List<ZoneStatistics>();
        foreach (Zone z in _pages.Zones)
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
            for (int pb = firstPb; pb < frontierPb; pb++) pageblocks[(int)_map.GetMigrateType(pb)]++;
            pageblocks[(int)z.InitialType] += (z.End >> _map.PageblockOrder) - frontierPb;
            zones.Add(new ZoneStatistics(z.Kind.ToString(), z.PageCount, freePages, orders, free, pageblocks));
        }
        var classes = new List<SlabClassStatistics>();
        foreach (SlabAllocator slabs in _slabs)
            foreach (SlabClass cls in slabs.Class)
            {
                long n, used;
                lock (cls.Lock) { n = cls.Slabs; used = cls.UsedSlots; }
                if (n == 0) continue;
                int c = cls.Index;
                classes.Add(new SlabClassStatistics(slabs.Kind, _classes.Size[c], _classes.PagesPerSlab[c], _classes.SlotsPerSlab[c], n, used));
            }
        (long liveBytes, long liveBlocks) = _caches.LiveTotals();
        return new HeapStatistics
        {
            LiveBytes = liveBytes,
            LiveBlocks = liveBlocks,
            CommittedBytes = _memory.CommittedBytes,
            ReservedBytes = _memory.ReservedBytes,
            DecommittedBytes = _memory.DecommittedBytes,
            PurgedBytes = _memory.PurgedBytes,
            PurgedFreeBytes = _pages.PurgedFreeBytes,
            SmallPagePageblocks = _memory.SmallPagePageblocks,
            LongTermPins = Volatile.Read(ref _longTermPins),
            LongTermPinMigrations = Volatile.Read(ref _longTermPinMigrations),
            LongTermPinBytesMoved = Volatile.Read(ref _longTermPinBytesMoved),
            LongTermPinFailures = Volatile.Read(ref _longTermPinFailures),
            DecommitFailures = _memory.DecommitFailures,
            CommitFailures = _memory.CommitFailures,
            MemoryLimit = _memoryLimit,
            MemoryLimitCommitRefusals = _memory.LimitRefusals,
            AdviceFailures = _memory.AdviceFailures,
            BackgroundFailures = Volatile.Read(ref _backgroundFailures),
            LastBackgroundFailure = Volatile.Read(ref _lastBackgroundFailure),
            UseAfterFreeDetections = _poison.Detections,
            HandleTableGrowthFailures = _handles.GrowthFailures,
            MetadataBytes = _pages.MetadataBytes + _handles.MetadataBytes,
            PageSize = _map.PageSize,
            PageblockPages = _map.PageblockPages,
            BlocksMigrated = _migrator.BlocksMigrated,
            BytesMigrated = _migrator.BytesMigrated,
            CachedSlots = _caches.CachedSlots(),
            CachedRuns = _caches.CachedRuns(),
            Compaction = CountersNow(),
            FragmentationScore = _compactor?.Score() ?? 0,
            Zones = zones,
            SlabClasses = classes,
        };
    }

    /// <summary>This heap's id: unique in the process and never reused (the owner word of its handle-table chunks); the
    /// <see cref="HeapMetrics.HeapTag"/> of its measurements.</summary>
    public long Id => _id;

    /// <summary>True once <see cref="Dispose"/> has succeeded.</summary>
    public bool IsDisposed => _disposed;

    private HeapStatistics? _metricsSnapshot;
    private (int slot, int atomic) _metricsPins;
    private long _metricsSnapshotAt;

    /// <summary>The pins held, for the metrics: taken with the snapshot (<see cref="MetricsSnapshot"/>).</summary>
    internal (int slot, int atomic) MetricsPins => _metricsPins;

    /// <summary>A statistics snapshot for one metrics collection: reused while younger than
    /// <paramref name="maxAgeMs"/>. Called under HeapMetrics' lock only.</summary>
    internal HeapStatistics MetricsSnapshot(long nowMs, long maxAgeMs)
    {
        if (_metricsSnapshot == null || nowMs - _metricsSnapshotAt > maxAgeMs)
        {
            lock (_statsLock)
            {
                if (_disposed) ThrowHelper.Disposed();
                _metricsSnapshot = GetStatisticsLocked();
                _metricsPins = CountPinsByKind();
            }
            _metricsSnapshotAt = nowMs;
        }
        return _metricsSnapshot;
    }

    /// <summary>
    /// A map of the arena for <see cref="ArenaMap.Svg"/>: each pageblock below the zones' frontiers with its migrate
    /// type, commit state, occupancy and pinned pages. Each pageblock is read under its zone's lock; the walk does not
    /// stop the heap, so the map shows it as it was during the walk.
    /// </summary>
    /// <remarks>Cost: proportional to the arena in use (every page descriptor below the frontiers is read).</remarks>
    /// <param name="title">The caption of the picture.</param>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public ArenaMap GetArenaMap(string title = "arena")
    {
        var views = new List<PageblockView>();
        lock (_statsLock)
        {
            if (_disposed) ThrowHelper.Disposed();
            int pbPages = _map.PageblockPages;
            foreach (Zone z in _pages.Zones)
            {
                (int first, int end) = z.UsedPageblocks;
                for (int pb = first; pb < end; pb++)
                {
                    double used = 0;
                    int pinned = 0, pinnedUnmovable = 0;
                    lock (z.Lock)
                    {
                        int start = pb * pbPages;
                        for (int p = start; p < start + pbPages;)
                        {
                            ref PageDescriptor d = ref _map.Page(p);
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
                                    int n = Math.Min(_classes.PagesPerSlab[d.SlabClass], start + pbPages - p);
                                    used += n * (double)d.RefCount / _classes.SlotsPerSlab[d.SlabClass];
                                    // A slot's atomic pins are counted on the page its block starts on.
                                    bool anyPinned = false;
                                    for (int q = p; q < p + n; q++) anyPinned |= Volatile.Read(ref _map.Page(q).PinCount) > 0;
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
                    }
                    views.Add(new PageblockView(pb, z.Kind.ToString(), _map.GetMigrateType(pb), _memory.IsCommitted(pb), used, pinned, pbPages, pinnedUnmovable));
                }
            }
        }
        return new ArenaMap(views, title);
    }

    /// <summary>A run head's block is movable: its handle entry says so (a racy read of the state word, for a picture).</summary>
    private static bool RunIsMovable(in PageDescriptor d) => (Volatile.Read(ref HandleStore.Get(d.RunHandle)->State) & EntryState.Movable) != 0;

    /// <summary>
    /// Page by page, <paramref name="count"/> pageblocks from <paramref name="firstPageblock"/> on (below the zones'
    /// frontiers), for <see cref="ArenaMap.PageSvg"/>: what each page holds, its occupancy and its pins. Read under
    /// each zone's lock, a pageblock at a time, like <see cref="GetArenaMap"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the arena.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public IReadOnlyList<PageView> GetPageMap(int firstPageblock, int count)
    {
        if (firstPageblock < 0 || count < 0 || (long)firstPageblock + count > _map.PageblockCount)
            throw new ArgumentOutOfRangeException(nameof(firstPageblock), $"pageblocks {firstPageblock}..{firstPageblock + count} are not all in the arena ({_map.PageblockCount}).");
        var views = new List<PageView>();
        lock (_statsLock)
        {
            if (_disposed) ThrowHelper.Disposed();
            int pbPages = _map.PageblockPages;
            for (int pb = firstPageblock; pb < firstPageblock + count; pb++)
            {
                Zone z = _pages.ZoneOf(pb * pbPages);
                if (pb * pbPages >= z.Frontier) continue;
                bool committed = _memory.IsCommitted(pb);
                MigrateType type = _map.GetMigrateType(pb);
                lock (z.Lock)
                {
                    for (int p = pb * pbPages; p < (pb + 1) * pbPages; p++)
                    {
                        int head = _map.HeadOf(p);
                        ref PageDescriptor d = ref _map.Page(head);
                        (string kind, double occupancy, bool movable) = d.Kind switch
                        {
                            PageKind.RunHead => ("run", 1.0, RunIsMovable(d)),
                            PageKind.SlabHead => ("slab", (double)d.RefCount / _classes.SlotsPerSlab[d.SlabClass], d.SlabKind == BlockKind.Movable),
                            _ => ("free", 0.0, false),
                        };
                        // A run's pins are on its head; a slot's on the page its block starts on.
                        bool pinned = kind == "run" ? Volatile.Read(ref d.PinCount) > 0 : kind == "slab" && Volatile.Read(ref _map.Page(p).PinCount) > 0;
                        views.Add(new PageView(p, kind, type, committed, occupancy, pinned, movable));
                    }
                }
            }
        }
        return views;
    }
}
