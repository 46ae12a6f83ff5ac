using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// The migrate scanner: compact_zone, isolate_migratepages_block and migrate_pages for runs and slabs.
internal sealed unsafe partial class Compactor
{
    // Scratch lists of the migrate scanner, reused by every pass (all protected by RunLock).
    private readonly List<int> _units = [];                                 // units of the cluster being isolated
    private readonly List<int> _pending = [];                               // units still to migrate this pass
    private readonly List<int> _retry = [];                                 // units that failed transiently
    private readonly List<(int head, MigrateResult result)> _results = [];  // outcome per unit of a pass
    private readonly List<(int head, int dst, int pages)> _runs = [];       // runs of the current batch
    private readonly List<uint> _entries = [];                              // live blocks of the slab being moved ...
    private readonly List<long> _states = [];                               // ... their state words ...
    private readonly List<nint> _slots = [];                                // ... and their slots
    private readonly List<(uint index, nint slot)> _handedOut = [];

    private void ResetCachedPositions()
    {
        for (int m = 0; m < 2; m++) { _cachedMigratePb[m] = _firstPb; _cachedFreePb[m] = FromTheTop; }
    }

    /// <summary>__reset_isolation_suitable: clear every skip bit of the zone. Only the scanners set skip bits, and they
    /// never pass the frontier, so the pageblocks above it have none.</summary>
    public void ResetSkipBits()
    {
        for (int pb = _firstPb, top = UsedTopPb; pb <= top; pb++) _map.SetSkip(pb, false);
    }

    /// <summary>
    /// compact_zone: the migrate scanner walks pageblocks up from the cached (or first) position, isolating movable
    /// runs and slabs in clusters of <see cref="ClusterMax"/> pages and migrating them to free blocks that the free
    /// scanner isolates walking down from the top of the used range (the last pageblock below the frontier, not the
    /// zone's end); it ends when the scanners meet or a finish condition holds.
    /// Caller holds RunLock and has dealt with the per-thread caches.
    /// </summary>
    public CompactStatus CompactZone(CompactControl cc)
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        int m = cc.Mode == CompactMode.Async ? 0 : 1;
        int migratePb = cc.WholeZone ? _firstPb : _cachedMigratePb[m];
        // One read of the frontier per run (see UsedTopPb): both scanners stay below it.
        int freePb = Math.Min(cc.WholeZone ? FromTheTop : _cachedFreePb[m], UsedTopPb);
        if (cc.Mode == CompactMode.SyncFull) ResetSkipBits();
        cc.StartTicks = _options.Clock.GetTimestamp();
        cc.BytesMovedAtStart = Counters[BytesMoved];
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
                BetweenPageblocks?.Invoke();
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
                _cachedFreePb[m] = FromTheTop;
            }
            else
            {
                _cachedMigratePb[m] = migratePb;
                _cachedFreePb[m] = Math.Max(freePb, migratePb);
            }
            if (cc.Contended) Counters[ContendedRuns]++;
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
        (cc.BudgetBytes > 0 && Counters[BytesMoved] - cc.BytesMovedAtStart >= cc.BudgetBytes)
        || (cc.BudgetTicks > 0 && _options.Clock.GetTimestamp() - cc.StartTicks >= cc.BudgetTicks);

    /// <summary>compaction_capture: when a run of the wanted size is free, take it for the requester before anyone
    /// else can. Checked at pageblock boundaries.</summary>
    private bool TryCapture(CompactControl cc)
    {
        if (!Acquire(_zone.Lock, cc)) return false;
        try
        {
            int start = _zone.AllocatePagesLocked(cc.CapturePages, MigrateType.Movable);
            if (start < 0) return false;
            _pages.InitRunLocked(_zone, start, cc.CapturePages, cc.CaptureIndex);
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
    /// of its descriptor (the cheap pinned-page skip): free blocks are skipped by their order, and runs and slabs with a raised pin
    /// count are rejected before any lock. Racy reads are safe because every unit is re-validated under its lock or
    /// by the freeze CAS; the worst a stale read does is skip a unit or try one that is gone.
    /// </summary>
    private CompactStatus CompactPageblock(CompactControl cc, int pb, ref int freePb)
    {
        int start = pb << _map.PageblockOrder, end = start + _map.PageblockPages;
        List<int> units = _units;
        units.Clear();
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
                    step = Math.Clamp(d.RunPages, 1, end - p);
                    if (d.PinCount > 0) { Counters[PinnedPagesSkipped] += step; break; }
                    // A run at least as large as the target cannot help form one (the kernel skips compound pages of
                    // order >= cc->order): moving it only costs a copy.
                    if (d.RunPages >= TargetPages(cc)) break;
                    units.Add(p);
                    clusterPages += step;
                    break;
                case PageKind.SlabHead:
                    if (d.SlabKind != BlockKind.Movable) break;
                    step = Math.Min(_slabs.Classes.PagesPerSlab[d.SlabClass], end - p);
                    if (SlabPinned(p, step)) { Counters[PinnedPagesSkipped] += step; break; }
                    units.Add(p);
                    clusterPages += step;
                    break;
            }
            scanned += step;
            p += step;
            if (clusterPages >= ClusterMax || (p >= end && units.Count > 0))
            {
                isolatedAny += units.Count;
                Counters[CompactIsolated] += clusterPages;
                status = MigrateUnits(cc, units, pb, ref freePb);
                units.Clear();
                clusterPages = 0;
            }
        }
        Counters[CompactMigrateScanned] += scanned;
        if (cc.Daemon) Counters[CompactDaemonMigrateScanned] += scanned;
        if (isolatedAny == 0 && !_map.GetSkip(pb))
        {
            _map.SetSkip(pb, true);
            Counters[SkipBitsSet]++;
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
        List<int> pending = _pending, retry = _retry;
        List<(int head, MigrateResult result)> results = _results;
        pending.Clear();
        pending.AddRange(units);
        for (int pass = 0; pass < passes && pending.Count > 0; pass++)
        {
            results.Clear();
            // The cluster's runs move together, under one process-wide barrier; each slab is its own batch.
            MigrateRuns(cc, pending, migratePb, ref freePb, results);
            foreach (int head in pending)
                if (_map.Page(head).Kind != PageKind.RunHead && !cc.Contended)
                    results.Add((head, MigrateSlab(cc, head, migratePb, ref freePb)));
            retry.Clear();
            foreach ((int head, MigrateResult r) in results)
            {
                // NoMemory: no free range of the unit's size among the targets (see IsolateTargets). The unit stays
                // and is not retried in this pass; the others go on.
                if (IsTransient(r)) retry.Add(head);
                else if (r is MigrateResult.OwnerFailed) Counters[PgmigrateFail] += UnitPages(head);
            }
            if (cc.Contended) return CompactStatus.Contended;
            (pending, retry) = (retry, pending);
        }
        foreach (int head in pending) Counters[PgmigrateFail] += UnitPages(head);
        // The free scanner met the migrate scanner and the pool is used up: nothing can move any more this pass.
        if (freePb <= migratePb && _freePool.TotalPages == 0) return CompactStatus.NoTargets;
        return CompactStatus.Continue;
    }

    private static bool IsTransient(MigrateResult r) =>
        r is MigrateResult.Pinned or MigrateResult.Busy or MigrateResult.OwnerRetry or MigrateResult.CacheHeld;

    private int UnitPages(int head)
    {
        ref PageDescriptor d = ref _map.Page(head);
        return d.Kind switch
        {
            PageKind.RunHead => Math.Max(1, d.RunPages),
            PageKind.SlabHead => _slabs.Classes.PagesPerSlab[d.SlabClass],
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
        // Room first: after PrepareRun a destination is taken, and an Add that failed to grow a list would strand it
        // (neither in the pool nor in the batch); the finally below adds a result per run, so that list too.
        _batch.EnsureRoom(heads.Count);
        _runs.EnsureCapacity(heads.Count);
        results.EnsureCapacity(results.Count + heads.Count);
        try
        {
            // Inside the try: a later run's PrepareRun may throw (the free scanner's pool failing to grow) while the
            // earlier runs hold their destinations, which the finally then gives back (their results are Busy).
            foreach (int head in heads)
            {
                if (_map.Page(head).Kind != PageKind.RunHead) continue;
                MigrateResult r = PrepareRun(cc, head, migratePb, ref freePb, out long state, out int pages, out int dst);
                if (r != MigrateResult.Success) { results.Add((head, r)); continue; }
                _batch.Add(_map.Page(dst).RunHandle, state, _map.AddressOf(head), _map.AddressOf(dst));
                _runs.Add((head, dst, pages));
            }
            if (_batch.Count > 0) Migrate(_batch);
        }
        finally
        {
            // Even when the migration (or a later run's preparation) threw: moved runs free their source, the others
            // their destination.
            for (int i = 0; i < _batch.Count; i++)
            {
                (int head, int dst, int pages) = _runs[i];
                if (_batch.Result[i] == MigrateResult.Success)
                {
                    FreePages(head, pages);
                    Counters[PgmigrateSuccess] += pages;
                }
                else
                {
                    ReturnToPool(dst, pages);
                }
                results.Add((head, _batch.Result[i]));
            }
        }
    }

    /// <summary>Validates a run by its entry and gives it destination pages (descriptors written, naming the entry).
    /// Success means ready to migrate.</summary>
    private MigrateResult PrepareRun(CompactControl cc, int head, int migratePb, ref int freePb, out long s, out int pages, out int dst)
    {
        s = 0; pages = 0; dst = -1;
        ref PageDescriptor d = ref _map.Page(head);
        uint index = d.RunHandle;
        if (!_handles.Owns(index)) return MigrateResult.Gone;   // not an entry of this heap: no run recorded here
        HandleEntry* e = _handles.Get(index);
        // The descriptor was read without a lock and may describe an older run at this page: the entry decides,
        // seqlock-style (state, address, page count, state again).
        s = Volatile.Read(ref e->State);
        nint address = Volatile.Read(ref e->Address);
        pages = d.RunPages;
        if ((s & (EntryState.Allocated | EntryState.Run | EntryState.Movable)) != (EntryState.Allocated | EntryState.Run | EntryState.Movable)
            || address != _map.AddressOf(head) || Volatile.Read(ref e->State) != s || pages <= 0) return MigrateResult.Gone;
        // pages came from the descriptor without a lock: the migrator confirms it under the freeze (a destination of
        // another length is void), so a stale value costs a failed attempt, never a short copy.
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;
        if (pages > 1 << _map.MaxOrder) return MigrateResult.NotMovable; // multi-pageblock runs stay (see native-layout.md)

        RunDestinationWanted?.Invoke();
        dst = CompactionAlloc(cc, pages, migratePb, ref freePb);
        if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
        if (!Acquire(_zone.Lock, cc)) { _freePool.Add(dst, pages); return MigrateResult.Busy; }   // nothing written yet
        _pages.InitRunLocked(_zone, dst, pages, index);
        _zone.Lock.Exit();
        return MigrateResult.Success;
    }

    /// <summary>
    /// Moves every live block of a slab into a new slab carved from free pages of the free scanner, then frees the
    /// source slab. Under the class lock: validate, list the live blocks, require that no thread cache holds a slot
    /// (RefCount equal to the live blocks; else a cache-held failure), isolate the source, carve the
    /// destination. Without any lock: the batch migration. Under the class lock again: settle both slabs.
    /// </summary>
    private MigrateResult MigrateSlab(CompactControl cc, int head, int migratePb, ref int freePb)
    {
        ref PageDescriptor d = ref _map.Page(head);
        if (d.Kind != PageKind.SlabHead || d.SlabKind != BlockKind.Movable) return MigrateResult.Gone;
        SlabClass cls = _slabs.Class[d.SlabClass];
        int pages = _slabs.Classes.PagesPerSlab[cls.Index];
        // A target first, before the class lock and the listing of its blocks: a slab with no free range of its size
        // is left at once (CompactionAlloc below then takes the range the pool holds).
        if (!IsolateTargets(cc, pages, migratePb, ref freePb)) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
        if (!Acquire(cls.Lock, cc)) return MigrateResult.Busy;
        int dst;
        try
        {
            if (!d.IsMovableSlabOf(cls.Index) || d.Kind != PageKind.SlabHead || d.SlabIsolated)
                return MigrateResult.Gone;
            if (d.RefCount == 0)
            {
                _slabs.ReleaseSlabLocked(cls, head);   // an empty slab: nothing to move
                Counters[LockAcquisitions]++;           // the zone lock inside
                Counters[PgmigrateSuccess] += pages;
                return MigrateResult.Success;
            }
            int refs = ListLiveBlocksLocked(cls, head);
            if (refs != _entries.Count)
            {
                Counters[CacheHeldFailures]++;
                return MigrateResult.CacheHeld;
            }
            // Every managed allocation before the destination is taken: once the slabs are isolated, nothing may throw.
            Span<nint> dstSlots = _entries.Count <= 1024 ? stackalloc nint[_entries.Count] : new nint[_entries.Count];
            _batch.Clear();
            _batch.EnsureRoom(_entries.Count);
            dst = CompactionAlloc(cc, pages, migratePb, ref freePb);
            if (dst < 0) return cc.Contended ? MigrateResult.Busy : MigrateResult.NoMemory;
            if (!Acquire(_zone.Lock, cc)) { _freePool.Add(dst, pages); return MigrateResult.Busy; }   // nothing written yet
            _slabs.InitIsolatedSlabLocked(cls, _zone, dst);
            _zone.Lock.Exit();
            _slabs.IsolateLocked(cls, head);
            int got = _slabs.TakeSlotsLocked(cls, dst, dstSlots, _entries.Count);
            Debug.Assert(got == _entries.Count, "a fresh slab holds every block of a slab of its class");
            for (int i = 0; i < got; i++) _batch.Add(_entries[i], _states[i], _slots[i], dstSlots[i]);
        }
        finally
        {
            cls.Lock.Exit();
        }

        (int moved, _) = MigrateSlabBatch(cls, head, dst);
        if (moved == _batch.Count) { Counters[PgmigrateSuccess] += pages; return MigrateResult.Success; }
        for (int i = 0; i < _batch.Count; i++)
            if (_batch.Result[i] != MigrateResult.Success && _batch.Result[i] != MigrateResult.Gone) return _batch.Result[i];
        return MigrateResult.Busy;   // every remaining block was freed or moved by someone else: look again
    }

    /// <summary>
    /// Lists the live movable blocks of a slab into <see cref="_entries"/>, <see cref="_states"/> and
    /// <see cref="_slots"/>: handed-out slots whose reverse-map entry is allocated, movable, not frozen and still at
    /// that slot. Caller holds the class lock (so the slot lists are stable); the entry reads are racy and confirmed
    /// later by the freeze. Returns the slab's RefCount: more than the blocks listed means some slots sit in thread
    /// caches or are being published (a cache-held failure).
    /// </summary>
    private int ListLiveBlocksLocked(SlabClass cls, int head)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        _entries.Clear(); _states.Clear(); _slots.Clear(); _handedOut.Clear();
        int refs = _slabs.ListHandedOutSlotsLocked(cls, head, _handedOut);
        foreach ((uint index, nint slot) in _handedOut)
        {
            if (!_handles.Owns(index)) continue;   // not an entry of this heap: a reverse-map word not yet written
            HandleEntry* e = _handles.Get(index);
            long state = Volatile.Read(ref e->State);
            // A frozen entry belongs to another migration (its address may be about to change): not listed, so the
            // slab's RefCount exceeds the list and the caller retries later.
            if ((state & (EntryState.Allocated | EntryState.Run | EntryState.Frozen | EntryState.Movable)) != (EntryState.Allocated | EntryState.Movable)
                || e->Address != slot) continue;
            _entries.Add(index);
            _states.Add(state);
            _slots.Add(slot);
        }
        return refs;
    }
}
