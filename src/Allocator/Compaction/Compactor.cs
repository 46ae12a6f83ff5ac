using System.Diagnostics;

namespace Compaction.Allocator;

/// <summary>Compaction priority (the kernel's MIGRATE_ASYNC, COMPACT_PRIO_SYNC_LIGHT, COMPACT_PRIO_SYNC_FULL).</summary>
internal enum CompactMode
{
    /// <summary>Never blocks: try-locks only; stops at the first contended lock. Honours skip bits.</summary>
    Async,
    /// <summary>Blocking locks; honours skip bits.</summary>
    SyncLight,
    /// <summary>Blocking locks; the whole zone, skip bits ignored (and reset first).</summary>
    SyncFull,
}

/// <summary>Why a compaction run ended (the kernel's COMPACT_* results).</summary>
internal enum CompactStatus
{
    Continue,
    /// <summary>The scanners met: the whole zone was scanned.</summary>
    Complete,
    /// <summary>The fragmentation score fell to the low watermark (proactive runs).</summary>
    WatermarkReached,
    /// <summary>The requested run was captured (direct compaction).</summary>
    Success,
    /// <summary>An asynchronous run met a held lock.</summary>
    Contended,
    /// <summary>The pass used its budget of bytes or time.</summary>
    BudgetExhausted,
    /// <summary>No free target was left for a movable unit.</summary>
    NoTargets,
}

/// <summary>The settings and progress of one compaction run (the kernel's struct compact_control).</summary>
internal sealed class CompactControl
{
    public CompactMode Mode;
    public bool WholeZone;
    public bool Proactive;
    public bool Daemon;
    public int CapturePages;          // direct compaction: the run the requester wants (0: none)
    public uint CaptureIndex;         // ... and the handle entry it will carry
    public int CapturedStart = -1;
    public long BudgetBytes;          // 0: unlimited
    public long BudgetTicks;          // Stopwatch ticks; 0: unlimited
    public long StartTicks;
    public int LowWatermark;
    public long BytesMovedAtStart;
    public bool Contended;
    public bool IgnoreSkipHint;
    public bool IgnoreSkip => IgnoreSkipHint || Mode == CompactMode.SyncFull;
}

/// <summary>
/// The compactor of the movable zone: slab consolidation, the two-scanner compaction, direct compaction with capture,
/// deferral, skip bits, the proactive background pass and the decommit of pageblocks that stayed free
/// (native-layout.md, "Compaction").
/// </summary>
/// <remarks>
/// Lock ordering: <see cref="RunLock"/> is the outermost lock of the heap (one compaction at a time; recursive, so every
/// entry point refuses to run when the current thread already holds it, as an owner callback would); a run then takes
/// the cache lock (to disable caches), one class lock at a time, and zone locks inside class locks, like the
/// allocator. No lock is held while blocks are frozen or owner callbacks run. All fields are protected by RunLock,
/// except the counters, which are read racily.
/// </remarks>
internal sealed unsafe class Compactor
{
    public const int ClusterMax = 32;               // COMPACT_CLUSTER_MAX: pages isolated per migration batch
    public const int MaxDeferShift = 6;             // COMPACT_MAX_DEFER_SHIFT
    public const int AsyncPasses = 3;               // migrate_pages: passes over transient failures
    public const int SyncPasses = 10;
    public const int ProactiveDeferWakes = 1 << MaxDeferShift;  // back-off after a pass without progress

    public readonly Lock RunLock = new();
    public readonly CompactionCounters Counters = new();
    private readonly NativeHeap _heap;
    private readonly PageMap _map;
    private readonly Zone _zone;
    private readonly SlabAllocator _slabs;
    private readonly MigrationBatch _batch = new();
    private readonly List<(int start, int order)> _isolated = [];
    private readonly FreePool _freePool = new();
    private readonly List<uint> _entries = [];
    private readonly List<long> _states = [];
    private readonly List<nint> _slots = [];
    private readonly List<(int head, int dst, int pages)> _runs = [];
    private readonly HashSet<int> _tried = [];
    private readonly int _firstPb, _lastPb;
    private readonly int[] _cachedMigratePb = new int[2];   // [async, sync]: where the next run resumes
    private readonly int[] _cachedFreePb = new int[2];
    private readonly long[] _freeSinceTicks;                 // per pageblock of the arena: when it was first seen free
    private int _considered, _deferShift, _orderFailed;
    private int _proactiveDefer;
    private bool _proactiveResume;   // the last proactive pass ended on its budget above the low watermark

    public Compactor(NativeHeap heap, Zone movableZone)
    {
        _heap = heap;
        _map = heap.Map;
        _zone = movableZone;
        _slabs = heap.Slabs[(int)BlockKind.Movable];
        _firstPb = _zone.Start >> _map.PageblockOrder;
        _lastPb = (_zone.End >> _map.PageblockOrder) - 1;
        ResetCachedPositions();
        _freeSinceTicks = new long[_map.PageblockCount];
        _orderFailed = _map.MaxOrder + 1;
    }

    public HeapOptions Options => _heap.OptionsRef;

    // ================================================================== triggers

    /// <summary>Explicit full compaction (/proc/sys/vm/compact_memory): consolidate every movable size class, then
    /// compact the whole movable zone synchronously, ignoring and resetting skip bits. Takes RunLock.</summary>
    public void CompactAll()
    {
        if (RunLock.IsHeldByCurrentThread) return;   // called from an owner callback of a running compaction
        lock (RunLock)
        {
            using var caches = new CacheGuard(_heap);
            ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncFull });
            CompactZone(new CompactControl { Mode = CompactMode.SyncFull, WholeZone = true });
        }
    }

    /// <summary>
    /// Direct compaction for a movable run of <paramref name="pages"/> that could not be allocated: unless deferred,
    /// an asynchronous run, then a synchronous one, each capturing the run as soon as one is free. Returns the first
    /// page of the captured run (already initialised for entry <paramref name="index"/>), or -1.
    /// </summary>
    public int DirectCompact(int pages, uint index)
    {
        int order = Math.Min(Zone.OrderFor(pages), _map.MaxOrder + 1);
        // RunLock is recursive: an owner callback that allocates must not start a compaction inside the running one
        // (it would reuse the batch and the free pool the outer run is iterating).
        if (RunLock.IsHeldByCurrentThread) return -1;
        lock (RunLock)
        {
            if (Deferred(order))
            {
                Counters.CompactDeferred++;
                return -1;
            }
            Counters.CompactStall++;
            if (Restarting(order)) ResetSkipBits();
            using var caches = new CacheGuard(_heap);
            int captured = -1;
            foreach (CompactMode mode in (ReadOnlySpan<CompactMode>)[CompactMode.Async, CompactMode.SyncLight])
            {
                var cc = new CompactControl { Mode = mode, CapturePages = pages, CaptureIndex = index };
                // Escalating to synchronous: first turn part-used slabs into free pages (zs_compact), which the
                // page-level pass alone cannot do.
                if (mode == CompactMode.SyncLight) ConsolidateSlabs(cc);
                CompactZone(cc);
                if ((captured = cc.CapturedStart) >= 0) break;
            }
            if (captured >= 0)
            {
                Counters.CompactSuccess++;
                Counters.Captured++;
                DeferReset(order, success: true);
            }
            else
            {
                Counters.CompactFail++;
                Defer(order);
            }
            return captured;
        }
    }

    /// <summary>
    /// One wake of the background compactor (kcompactd), with the time passed in so tests drive it by hand:
    /// consolidate size classes within the budget; if the fragmentation score is above the high watermark, compact
    /// until it falls to the low one (or the budget ends), backing off for 64 wakes when a pass made no progress;
    /// then decommit pageblocks that stayed free for the decommit delay. Skips the wake if another compaction runs.
    /// </summary>
    public void DaemonStep(TimeSpan now)
    {
        if (RunLock.IsHeldByCurrentThread || !RunLock.TryEnter()) return;
        try
        {
            Counters.CompactDaemonWake++;
            HeapOptions o = Options;
            long budgetTicks = o.CompactionBudgetTime == TimeSpan.Zero ? 0 : (long)(o.CompactionBudgetTime.TotalSeconds * Stopwatch.Frequency);
            (int low, int high) = Fragmentation.Watermarks(o.Proactiveness);
            int score = Score();
            bool proactive = o.Proactiveness > 0 && _proactiveDefer == 0 && (score > high || (_proactiveResume && score > low));
            if (_proactiveDefer > 0) _proactiveDefer--;
            // An idle wake costs no drain: caches are disabled only when some class is worth consolidating or a
            // proactive pass is due (otherwise every wake would drain the caches, leaving part-used slabs to move).
            if (proactive || AnyClassWorthConsolidating())
            {
                using var caches = new CacheGuard(_heap);
                ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncLight, Daemon = true, BudgetBytes = o.CompactionBudgetBytes, BudgetTicks = budgetTicks, StartTicks = Stopwatch.GetTimestamp(), BytesMovedAtStart = Counters.BytesMoved });
                if (proactive)
                {
                    // A pass starts above the high watermark; one that its budget cut short resumes at the next wake
                    // (from the cached scanner positions) for as long as the score is above the low watermark.
                    // proactive_compact_node: skip hints ignored, synchronous-light; a fresh pass covers the whole zone.
                    CompactStatus status = CompactZone(new CompactControl
                    {
                        Mode = CompactMode.SyncLight, Proactive = true, Daemon = true, LowWatermark = low,
                        WholeZone = !_proactiveResume, IgnoreSkipHint = true,
                        BudgetBytes = o.CompactionBudgetBytes, BudgetTicks = budgetTicks,
                    });
                    int after = Score();
                    _proactiveResume = status == CompactStatus.BudgetExhausted && after > low;
                    _proactiveDefer = after < score || _proactiveResume ? 0 : ProactiveDeferWakes;
                }
            }
            if (!proactive && score <= low) _proactiveResume = false;
            Trim(now);
        }
        finally
        {
            RunLock.Exit();
        }
    }

    /// <summary>The proactive score: extfrag at pageblock order of the movable zone, in percent. Lock-free: the free
    /// counts are read racily; a torn view only shifts a heuristic.</summary>
    public int Score()
    {
        Span<long> free = stackalloc long[_map.MaxOrder + 1];
        for (int o = 0; o <= _map.MaxOrder; o++) free[o] = _zone.FreeBlocks(o, MigrateType.Movable) + _zone.FreeBlocks(o, MigrateType.Unmovable);
        return Fragmentation.ExtfragForOrder(free, _map.PageblockOrder);
    }

    // ================================================================== deferral (compaction_deferred and friends)

    private bool Deferred(int order)
    {
        if (order < _orderFailed) return false;
        int limit = 1 << _deferShift;
        if (++_considered >= limit) { _considered = limit; return false; }
        return true;
    }

    private void Defer(int order)
    {
        _considered = 0;
        if (++_deferShift > MaxDeferShift) _deferShift = MaxDeferShift;
        if (order < _orderFailed) _orderFailed = order;
    }

    private void DeferReset(int order, bool success)
    {
        if (success) { _considered = 0; _deferShift = 0; }
        if (order >= _orderFailed) _orderFailed = order + 1;
    }

    private bool Restarting(int order) =>
        order >= _orderFailed && _deferShift == MaxDeferShift && _considered >= 1 << _deferShift;

    /// <summary>For tests: the deferral state (considered, defer shift, order failed).</summary>
    public (int considered, int shift, int orderFailed) Deferral => (_considered, _deferShift, _orderFailed);

    // ================================================================== the two scanners

    private void ResetCachedPositions()
    {
        for (int m = 0; m < 2; m++) { _cachedMigratePb[m] = _firstPb; _cachedFreePb[m] = _lastPb; }
    }

    /// <summary>__reset_isolation_suitable: clear every skip bit of the zone.</summary>
    public void ResetSkipBits()
    {
        for (int pb = _firstPb; pb <= _lastPb; pb++) _map.SetSkip(pb, false);
    }

    /// <summary>
    /// compact_zone: the migrate scanner walks pageblocks up from the cached (or first) position, isolating movable
    /// runs and slabs in clusters of <see cref="ClusterMax"/> pages and migrating them to free blocks that the free
    /// scanner isolates walking down from the top; it ends when the scanners meet or a finish condition holds.
    /// Caller holds RunLock and has dealt with the per-thread caches.
    /// </summary>
    public CompactStatus CompactZone(CompactControl cc)
    {
        int m = cc.Mode == CompactMode.Async ? 0 : 1;
        int migratePb = cc.WholeZone ? _firstPb : _cachedMigratePb[m];
        int freePb = cc.WholeZone ? _lastPb : _cachedFreePb[m];
        if (cc.Mode == CompactMode.SyncFull) ResetSkipBits();
        cc.StartTicks = Stopwatch.GetTimestamp();
        cc.BytesMovedAtStart = Counters.BytesMoved;
        CompactStatus status = CompactStatus.Continue;
        try
        {
            while (status == CompactStatus.Continue)
            {
                if (migratePb > freePb) { status = CompactStatus.Complete; break; }
                status = CheckFinish(cc);
                if (status != CompactStatus.Continue) break;
                if (!cc.IgnoreSkip && _map.GetSkip(migratePb)) { migratePb++; continue; }
                status = CompactPageblock(cc, migratePb, ref freePb);
                if (status == CompactStatus.Continue) migratePb++;
            }
        }
        finally
        {
            ReturnFreePool();
            // Scanners that met, either in the loop or inside the free scanner (no target left between them), end
            // the zone's pass: the next run starts over from both ends (reset_cached_positions).
            if (status is CompactStatus.Complete or CompactStatus.NoTargets)
            {
                _cachedMigratePb[m] = _firstPb;
                _cachedFreePb[m] = _lastPb;
            }
            else
            {
                _cachedMigratePb[m] = migratePb;
                _cachedFreePb[m] = Math.Max(freePb, migratePb);
            }
            if (cc.Contended) Counters.ContendedRuns++;
        }
        return status;
    }

    private CompactStatus CheckFinish(CompactControl cc)
    {
        if (cc.Contended) return CompactStatus.Contended;
        if (cc.CapturePages > 0 && TryCapture(cc)) return CompactStatus.Success;
        if (cc.Proactive && Score() <= cc.LowWatermark) return CompactStatus.WatermarkReached;
        if (BudgetSpent(cc)) return CompactStatus.BudgetExhausted;
        return CompactStatus.Continue;
    }

    private bool BudgetSpent(CompactControl cc) =>
        (cc.BudgetBytes > 0 && Counters.BytesMoved - cc.BytesMovedAtStart >= cc.BudgetBytes)
        || (cc.BudgetTicks > 0 && Stopwatch.GetTimestamp() - cc.StartTicks >= cc.BudgetTicks);

    /// <summary>compaction_capture: when a run of the wanted size is free, take it for the requester before anyone
    /// else can. Checked at pageblock boundaries.</summary>
    private bool TryCapture(CompactControl cc)
    {
        if (!Acquire(_zone.Lock, cc)) return false;
        try
        {
            int start = _zone.AllocatePagesLocked(cc.CapturePages, MigrateType.Movable);
            if (start < 0) return false;
            _heap.InitRun(start, cc.CapturePages, cc.CaptureIndex);
            cc.CapturedStart = start;
            return true;
        }
        finally
        {
            _zone.Lock.Exit();
        }
    }

    /// <summary>
    /// isolate_migratepages_block plus migrate_pages for one pageblock. Each page is first judged by lock-free reads
    /// of its descriptor (seed 000): free blocks are skipped by their order, and runs and slabs with a raised pin
    /// count are rejected before any lock. Racy reads are safe because every unit is re-validated under its lock or
    /// by the freeze CAS; the worst a stale read does is skip a unit or try one that is gone.
    /// </summary>
    private CompactStatus CompactPageblock(CompactControl cc, int pb, ref int freePb)
    {
        int start = pb << _map.PageblockOrder, end = start + _map.PageblockPages;
        var units = new List<int>(8);
        int clusterPages = 0, isolatedAny = 0, scanned = 0;
        CompactStatus status = CompactStatus.Continue;
        for (int p = start; p < end && status == CompactStatus.Continue;)
        {
            ref PageDescriptor d = ref _map.Page(p);
            int step = 1;
            switch (d.Kind)
            {
                case PageKind.FreeHead:
                    int order = d.Order;    // lockless order read, bounded as the kernel does
                    if (order <= _map.MaxOrder) step = 1 << order;
                    break;
                case PageKind.RunHead:
                    step = Math.Clamp(d.Aux2, 1, end - p);
                    if (d.PinCount > 0) { Counters.PinnedPagesSkipped += step; break; }
                    // A run at least as large as the target cannot help form one (the kernel skips compound pages of
                    // order >= cc->order): moving it only costs a copy.
                    if (d.Aux2 >= TargetPages(cc)) break;
                    units.Add(p);
                    clusterPages += step;
                    break;
                case PageKind.SlabHead:
                    if ((d.SizeClass >> 15) != (int)BlockKind.Movable) break;
                    step = Math.Min(_slabs.Classes.PagesPerSlab[d.SizeClass & 0x7FFF], end - p);
                    if (SlabPinned(p, step)) { Counters.PinnedPagesSkipped += step; break; }
                    units.Add(p);
                    clusterPages += step;
                    break;
            }
            scanned += step;
            p += step;
            if (clusterPages >= ClusterMax || (p >= end && units.Count > 0))
            {
                isolatedAny += units.Count;
                Counters.CompactIsolated += clusterPages;
                status = MigrateUnits(cc, units, pb, ref freePb);
                units.Clear();
                clusterPages = 0;
            }
        }
        Counters.CompactMigrateScanned += scanned;
        if (cc.Daemon) Counters.CompactDaemonMigrateScanned += scanned;
        if (isolatedAny == 0 && !_map.GetSkip(pb))
        {
            _map.SetSkip(pb, true);
            Counters.SkipBitsSet++;
        }
        return status;
    }

    /// <summary>The size of run the run is meant to produce: the captured request, else a pageblock.</summary>
    private int TargetPages(CompactControl cc) => cc.CapturePages > 0 ? cc.CapturePages : _map.PageblockPages;

    /// <summary>Lock-free: any atomic pin on any page of the slab (racy; false positives only delay a move).</summary>
    private bool SlabPinned(int head, int pages)
    {
        for (int q = head; q < head + pages; q++)
            if (Volatile.Read(ref _map.Page(q).PinCount) > 0) return true;
        return false;
    }

    /// <summary>
    /// migrate_pages for a cluster: every unit is tried; transient failures (pinned since the check, busy, owner
    /// says try again, a cache holds a slot) are retried for a bounded number of passes (3 asynchronous, 10
    /// synchronous); what still fails is counted in pgmigrate_fail and left where it is.
    /// </summary>
    private CompactStatus MigrateUnits(CompactControl cc, List<int> units, int migratePb, ref int freePb)
    {
        int passes = cc.Mode == CompactMode.Async ? AsyncPasses : SyncPasses;
        var pending = new List<int>(units);
        var results = new List<(int head, MigrateResult result)>(units.Count);
        for (int pass = 0; pass < passes && pending.Count > 0; pass++)
        {
            results.Clear();
            // The cluster's runs move together, under one process-wide barrier; each slab is its own batch.
            MigrateRuns(cc, pending, migratePb, ref freePb, results);
            foreach (int head in pending)
                if (_map.Page(head).Kind != PageKind.RunHead && !cc.Contended)
                    results.Add((head, MigrateSlab(cc, head, migratePb, ref freePb)));
            var retry = new List<int>();
            foreach ((int head, MigrateResult r) in results)
            {
                if (r == MigrateResult.NoMemory) return CompactStatus.NoTargets;
                if (IsTransient(r)) retry.Add(head);
                else if (r is MigrateResult.OwnerFailed) Counters.PgmigrateFail += UnitPages(head);
            }
            if (cc.Contended) return CompactStatus.Contended;
            pending = retry;
        }
        foreach (int head in pending) Counters.PgmigrateFail += UnitPages(head);
        return CompactStatus.Continue;
    }

    private static bool IsTransient(MigrateResult r) =>
        r is MigrateResult.Pinned or MigrateResult.Busy or MigrateResult.OwnerRetry or MigrateResult.CacheHeld;

    private int UnitPages(int head)
    {
        ref PageDescriptor d = ref _map.Page(head);
        return d.Kind switch
        {
            PageKind.RunHead => Math.Max(1, d.Aux2),
            PageKind.SlabHead => _slabs.Classes.PagesPerSlab[d.SizeClass & 0x7FFF],
            _ => 1,
        };
    }

    /// <summary>
    /// Moves the runs among <paramref name="heads"/> (one large block each) to free pages from the free scanner, all
    /// in one batch: one process-wide barrier for the cluster instead of one per run. Adds a result per run head.
    /// </summary>
    private void MigrateRuns(CompactControl cc, List<int> heads, int migratePb, ref int freePb, List<(int head, MigrateResult result)> results)
    {
        _batch.Clear();
        _runs.Clear();
        foreach (int head in heads)
        {
            if (_map.Page(head).Kind != PageKind.RunHead) continue;
            MigrateResult r = PrepareRun(cc, head, migratePb, ref freePb, out long state, out int pages, out int dst);
            if (r != MigrateResult.Success) { results.Add((head, r)); continue; }
            _batch.Add((uint)_map.Page(dst).Aux, state, _map.AddressOf(head), _map.AddressOf(dst));
            _runs.Add((head, dst, pages));
        }
        if (_batch.Count == 0) return;
        _heap.MigrateBatch(_batch, Counters);
        for (int i = 0; i < _batch.Count; i++)
        {
            (int head, int dst, int pages) = _runs[i];
            if (_batch.Result[i] == MigrateResult.Success)
            {
                FreePages(cc, head, pages);
                Counters.PgmigrateSuccess += pages;
            }
            else
            {
                ReturnToPool(dst, pages);
            }
            results.Add((head, _batch.Result[i]));
        }
    }

    /// <summary>Validates a run by its entry and gives it destination pages (descriptors written, naming the entry).
    /// Success means ready to migrate.</summary>
    private MigrateResult PrepareRun(CompactControl cc, int head, int migratePb, ref int freePb, out long s, out int pages, out int dst)
    {
        s = 0; pages = 0; dst = -1;
        ref PageDescriptor d = ref _map.Page(head);
        uint index = (uint)d.Aux;
        if (index == 0 || index >= _heap.Handles.Count) return MigrateResult.Gone;
        HandleEntry* e = _heap.Handles.Get(index);
        // The descriptor was read without a lock and may describe an older run at this page: take the run's size
        // from the entry, seqlock-style (state, address, size, state again), never from the descriptor.
        s = Volatile.Read(ref e->State);
        nint address = Volatile.Read(ref e->Address);
        long size = Volatile.Read(ref e->Size);
        if ((s & (EntryState.Allocated | EntryState.Run | EntryState.Movable)) != (EntryState.Allocated | EntryState.Run | EntryState.Movable)
            || address != _map.AddressOf(head) || Volatile.Read(ref e->State) != s) return MigrateResult.Gone;
        pages = (int)((size + _map.PageSize - 1) >> _map.PageShift);
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;
        if (pages > 1 << _map.MaxOrder) return MigrateResult.NotMovable; // multi-pageblock runs stay (see native-layout.md)

        dst = CompactionAlloc(cc, pages, migratePb, ref freePb);
        if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
        if (!Acquire(_zone.Lock, cc)) { ReturnToPool(dst, pages); return MigrateResult.Busy; }
        _heap.InitRun(dst, pages, index);
        _zone.Lock.Exit();
        return MigrateResult.Success;
    }

    /// <summary>
    /// Moves every live block of a slab into a new slab carved from free pages of the free scanner, then frees the
    /// source slab. Under the class lock: validate, list the live blocks, require that no thread cache holds a slot
    /// (RefCount equal to the live blocks; else a cache-held failure, seed 001), isolate the source, carve the
    /// destination. Without any lock: the batch migration. Under the class lock again: settle both slabs.
    /// </summary>
    private MigrateResult MigrateSlab(CompactControl cc, int head, int migratePb, ref int freePb)
    {
        ref PageDescriptor d = ref _map.Page(head);
        if (d.Kind != PageKind.SlabHead || (d.SizeClass >> 15) != (int)BlockKind.Movable) return MigrateResult.Gone;
        SlabClass cls = _slabs.Class[d.SizeClass & 0x7FFF];
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        if (!Acquire(cls.Lock, cc)) return MigrateResult.Busy;
        int dst;
        try
        {
            if (d.Kind != PageKind.SlabHead || (d.SizeClass & 0x7FFF) != cls.Index || (d.Flags & SlabAllocator.IsolatedFlag) != 0)
                return MigrateResult.Gone;
            if (d.RefCount == 0)
            {
                _slabs.ReleaseSlabLocked(cls, head);   // an empty slab: nothing to move
                Counters.LockAcquisitions++;           // the zone lock inside
                Counters.PgmigrateSuccess += pages;
                return MigrateResult.Success;
            }
            _entries.Clear(); _states.Clear(); _slots.Clear();
            int refs = _slabs.ListLiveBlocksLocked(cls, head, _entries, _states, _slots);
            if (refs != _entries.Count)
            {
                Counters.CacheHeldFailures++;
                return MigrateResult.CacheHeld;
            }
            dst = CompactionAlloc(cc, pages, migratePb, ref freePb);
            if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
            if (!Acquire(_zone.Lock, cc)) { ReturnToPool(dst, pages); return MigrateResult.Busy; }
            _slabs.InitIsolatedSlabLocked(cls, dst);
            _zone.Lock.Exit();
            _slabs.IsolateLocked(cls, head);
            Span<nint> dstSlots = _entries.Count <= 1024 ? stackalloc nint[_entries.Count] : new nint[_entries.Count];
            int got = _slabs.TakeSlotsLocked(cls, dst, dstSlots, _entries.Count);
            Debug.Assert(got == _entries.Count, "a fresh slab holds every block of a slab of its class");
            _batch.Clear();
            for (int i = 0; i < got; i++) _batch.Add(_entries[i], _states[i], _slots[i], dstSlots[i]);
        }
        finally
        {
            cls.Lock.Exit();
        }

        int moved = _heap.MigrateBatch(_batch, Counters);

        lock (cls.Lock)
        {
            Counters.LockAcquisitions++;
            ReleaseBatchSlotsLocked(cls);
            bool srcFreed = _slabs.PutbackLocked(cls, head, releaseIfEmpty: true);
            _slabs.PutbackLocked(cls, dst, releaseIfEmpty: true);
            if (srcFreed) Counters.LockAcquisitions++;
            if (moved == _batch.Count) { Counters.PgmigrateSuccess += pages; return MigrateResult.Success; }
        }
        for (int i = 0; i < _batch.Count; i++)
            if (_batch.Result[i] != MigrateResult.Success && _batch.Result[i] != MigrateResult.Gone) return _batch.Result[i];
        return MigrateResult.Busy;   // every remaining block was freed or moved by someone else: look again
    }

    // ================================================================== the free scanner's pool

    /// <summary>
    /// compaction_alloc: <paramref name="pages"/> contiguous free pages from the isolated pool, isolating more free
    /// blocks with the free scanner (pageblock by pageblock, downward, never at or below the migrate scanner) when no
    /// range of the pool is long enough. The pool keeps isolated pages as coalesced ranges, so a run of 9 pages can
    /// use 8 + 1 adjacent free pages instead of needing a block of 16. Returns the first page (committed, marked
    /// FreeTail, owned by the caller) or -1 when the scanners met or (async) a zone lock was contended.
    /// </summary>
    private int CompactionAlloc(CompactControl cc, int pages, int migratePb, ref int freePb)
    {
        while (true)
        {
            int start = _freePool.Take(pages);
            if (start >= 0)
            {
                if (!Acquire(_zone.Lock, cc)) { _freePool.Add(start, pages); return -1; }
                bool committed = _zone.CommitRangeLocked(start, pages);
                _zone.Lock.Exit();
                if (committed) return start;
                _freePool.Add(start, pages);
                return -1;
            }
            if (freePb <= migratePb) return -1;
            int pb = freePb--;
            if (!cc.IgnoreSkip && _map.GetSkip(pb)) continue;
            if (!Acquire(_zone.Lock, cc)) { freePb++; return -1; }
            _isolated.Clear();
            int isolated = _zone.IsolateFreeBlocksLocked(pb, _isolated);
            _zone.Lock.Exit();
            foreach ((int s, int order) in _isolated) _freePool.Add(s, 1 << order);
            Counters.CompactFreeScanned += _map.PageblockPages;
            if (cc.Daemon) Counters.CompactDaemonFreeScanned += _map.PageblockPages;
            Counters.CompactIsolated += isolated;
            if (isolated == 0 && !_map.GetSkip(pb))
            {
                _map.SetSkip(pb, true);
                Counters.SkipBitsSet++;
            }
        }
    }

    /// <summary>compaction_free: pages the caller did not use go back to the pool (their descriptors back to FreeTail,
    /// under the zone lock, since the caller may have written run or slab descriptors on them).</summary>
    private void ReturnToPool(int start, int pages)
    {
        lock (_zone.Lock)
        {
            Counters.LockAcquisitions++;
            for (int p = start; p < start + pages; p++) _map.Page(p).Kind = PageKind.FreeTail;
        }
        _freePool.Add(start, pages);
    }

    /// <summary>release_freepages: the pool goes back to the buddy allocator at the end of a run.</summary>
    private void ReturnFreePool()
    {
        if (_freePool.Count == 0) return;
        lock (_zone.Lock)
        {
            Counters.LockAcquisitions++;
            foreach ((int start, int length) in _freePool.Ranges) _zone.FreeRangeLocked(start, length);
        }
        _freePool.Clear();
    }

    private void FreePages(CompactControl cc, int start, int pages)
    {
        lock (_zone.Lock)
        {
            Counters.LockAcquisitions++;
            _zone.FreeRangeLocked(start, pages);
        }
    }

    /// <summary>Takes a lock for the compactor: a try-lock in asynchronous mode (a miss marks the run contended), a
    /// blocking one otherwise. Every acquisition is counted (seed 000's lock counter).</summary>
    private bool Acquire(Lock l, CompactControl cc)
    {
        if (cc.Mode == CompactMode.Async)
        {
            if (!l.TryEnter()) { cc.Contended = true; return false; }
        }
        else
        {
            l.Enter();
        }
        Counters.LockAcquisitions++;
        return true;
    }

    // ================================================================== slab consolidation (zs_compact)

    /// <summary>
    /// For every movable size class: while zs_can_compact is above zero, move the blocks of the least-full slab
    /// into the fullest ones and free it. A slab whose slots sit in a thread cache is skipped (cache-held failure).
    /// </summary>
    public void ConsolidateSlabs(CompactControl cc)
    {
        cc.StartTicks = cc.StartTicks == 0 ? Stopwatch.GetTimestamp() : cc.StartTicks;
        foreach (SlabClass cls in _slabs.Class)
        {
            _tried.Clear();
            while (!BudgetSpent(cc) && !cc.Contended && ConsolidateOne(cc, cls)) { }
        }
    }

    /// <summary>After a slab batch: the source slot of every moved block and the destination slot of every block
    /// that stayed are free again. Caller holds the class lock.</summary>
    private void ReleaseBatchSlotsLocked(SlabClass cls)
    {
        for (int i = 0; i < _batch.Count; i++)
            _slabs.FreeSlotLocked(cls, _batch.Result[i] == MigrateResult.Success ? _batch.Src[i] : _batch.Dst[i]);
    }

    /// <summary>
    /// The background compactor's hysteresis for consolidation (like Redis active defrag's threshold): a class is worth
    /// it when zs_can_compact would free at least two slabs and at least an eighth of the class's pages. Explicit
    /// compaction consolidates down to zero regardless. Reads the class counters racily (a heuristic).
    /// </summary>
    private bool WorthConsolidatingLocked(SlabClass cls)
    {
        int capacity = _slabs.Classes.SlotsPerSlab[cls.Index];
        long freeSlabs = (cls.Slabs * capacity - cls.UsedSlots) / capacity;
        return cls.Slabs >= 3 && freeSlabs >= 2 && freeSlabs * 8 >= cls.Slabs;
    }

    private bool AnyClassWorthConsolidating()
    {
        foreach (SlabClass cls in _slabs.Class)
        {
            long slabs = Volatile.Read(ref cls.Slabs);
            if (slabs < 3) continue;
            int capacity = _slabs.Classes.SlotsPerSlab[cls.Index];
            long freeSlabs = (slabs * capacity - Volatile.Read(ref cls.UsedSlots)) / capacity;
            if (freeSlabs >= 2 && freeSlabs * 8 >= slabs) return true;
        }
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
            if (cc.Daemon && !WorthConsolidatingLocked(cls)) return false;
            src = _slabs.FindLeastFullLocked(cls, _tried);
            if (src < 0) return false;
            _tried.Add(src);
            _entries.Clear(); _states.Clear(); _slots.Clear();
            int refs = _slabs.ListLiveBlocksLocked(cls, src, _entries, _states, _slots);
            if (refs != _entries.Count)
            {
                Counters.CacheHeldFailures++;
                return true;
            }
            _slabs.IsolateLocked(cls, src);
            // Destination slots from the fullest slabs; never carve a new slab for this.
            Span<nint> one = stackalloc nint[1];
            _batch.Clear();
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

        int moved = _heap.MigrateBatch(_batch, Counters);

        lock (cls.Lock)
        {
            Counters.LockAcquisitions++;
            ReleaseBatchSlotsLocked(cls);
            if (_slabs.PutbackLocked(cls, src, releaseIfEmpty: true))
            {
                Counters.PagesCompacted += pages;
                Counters.LockAcquisitions++;
            }
        }
        // Blocks that failed stay in the source slab, which is now marked tried; a later run retries them.
        Counters.PgmigrateSuccess += moved == _batch.Count && _batch.Count == _entries.Count ? pages : 0;
        return true;
    }

    // ================================================================== memory back to the OS

    /// <summary>
    /// Decommits pageblocks that have been wholly free for at least <see cref="HeapOptions.DecommitDelay"/>
    /// (hysteresis, like jemalloc's decay), so that resident memory follows live memory without thrashing when
    /// memory is freed and reused at once. A pageblock's clock restarts whenever it is seen in use.
    /// </summary>
    public long Trim(TimeSpan now)
    {
        long delay = Options.DecommitDelay.Ticks, bytes = 0, nowTicks = Math.Max(1, now.Ticks);
        foreach (Zone? z in (ReadOnlySpan<Zone?>)[_heap.NormalZone, _heap.MovableZone])
        {
            if (z == null) continue;
            lock (z.Lock)
            {
                for (int pb = z.Start >> _map.PageblockOrder; pb < z.End >> _map.PageblockOrder; pb++)
                {
                    if (!_heap.Memory.IsCommitted(pb) || !z.IsPageblockFreeLocked(pb)) { _freeSinceTicks[pb] = 0; continue; }
                    if (_freeSinceTicks[pb] == 0) _freeSinceTicks[pb] = nowTicks;
                    if (nowTicks - _freeSinceTicks[pb] < delay) continue;
                    _heap.Memory.Decommit(pb);
                    _freeSinceTicks[pb] = 0;
                    bytes += (long)_map.PageblockPages << _map.PageShift;
                }
            }
        }
        Counters.BytesDecommitted += bytes;
        return bytes;
    }

    /// <summary>Disables and drains the per-thread caches for the length of a run (seed 001), unless the heap's
    /// options keep them on.</summary>
    private readonly struct CacheGuard : IDisposable
    {
        private readonly NativeHeap? _heap;

        public CacheGuard(NativeHeap heap)
        {
            if (!heap.OptionsRef.ThreadCachesDuringMigration)
            {
                heap.DisableThreadCaches();
                _heap = heap;
            }
        }

        public void Dispose() => _heap?.EnableThreadCaches();
    }
}
