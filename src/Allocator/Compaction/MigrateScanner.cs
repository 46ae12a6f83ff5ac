using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

// The migrate scanner: compact_zone, isolate_migratepages_block and migrate_pages for runs and slabs.
internal sealed unsafe class MigrateScanner
{
    /// <summary>A cached free-scanner position meaning "start at the top of the used range".</summary>
    private const int FromTheTop = int.MaxValue;

    private readonly CompactionContext _cx;
    private readonly PageMap _map;
    private readonly Zone _zone;
    private readonly SlabAllocator _slabs;
    private readonly FreeScanner _free;
    private readonly UnitMover _unitMover;
    private readonly int _firstPb;
    private readonly int[] _cachedMigratePb = new int[2];   // [async, sync]: where the next run resumes
    private readonly int[] _cachedFreePb = new int[2];      // ... FromTheTop: at the top of the used range
    private readonly int[] _cachedMigratePage = new int[2]; // ... the page of that pageblock to resume at (-1: its start)
    private int _cutAt = -1;                                 // the first unit a budget left untried in the last pageblock
    // Scratch lists of the migrate scanner, reused by every pass (all protected by RunLock).
    private readonly List<int> _units = [];                                 // units of the pageblock being isolated
    private readonly List<int> _pending = [];                               // units still to migrate this pass
    private readonly List<int> _retry = [];                                 // units that failed transiently
    private readonly List<(int head, MigrateResult result)> _results = [];  // outcome per unit of a pass

    public MigrateScanner(CompactionContext cx, FreeScanner free, SlabMover mover)
    {
        _cx = cx;
        _map = cx.Map;
        _zone = cx.Zone;
        _slabs = cx.Slabs;
        _free = free;
        _unitMover = new UnitMover(cx, free, mover);
        _firstPb = cx.FirstPb;
        ResetCachedPositions();
    }

    private int UsedTopPb => _cx.UsedTopPb;

    private void ResetCachedPositions()
    {
        for (int m = 0; m < 2; m++) { _cachedMigratePb[m] = _firstPb; _cachedFreePb[m] = FromTheTop; _cachedMigratePage[m] = -1; }
    }

    /// <summary>__reset_isolation_suitable: clear every skip bit of the zone. Only the scanners set skip bits, and they
    /// never pass the frontier, so the pageblocks above it have none.</summary>
    public void ResetSkipBits()
    {
        for (int pb = _firstPb, top = UsedTopPb; pb <= top; pb++) _map.SetSkip(pb, false);
    }

    /// <summary>
    /// compact_zone: the migrate scanner walks pageblocks up from the cached (or first) position, isolating movable
    /// runs and slabs pageblock by pageblock and migrating each pageblock's units together (<see cref="UnitMover"/>) to free blocks that the free
    /// scanner isolates walking down from the top of the used range (the last pageblock below the frontier, not the
    /// zone's end); it ends when the scanners meet or a finish condition holds.
    /// Caller holds RunLock and has dealt with the per-thread caches.
    /// </summary>
    public CompactStatus CompactZone(CompactControl cc)
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        int m = cc.Mode == CompactMode.Async ? 0 : 1;
        int migratePb = cc.WholeZone ? _firstPb : _cachedMigratePb[m];
        // A pageblock a budget cut short resumes at the first unit it left untried, so that successive slices advance
        // through a pageblock of many small slabs instead of retrying its first units every time.
        int from = cc.WholeZone ? -1 : _cachedMigratePage[m];
        // One read of the frontier per run (see UsedTopPb): both scanners stay below it.
        int freePb = Math.Min(cc.WholeZone ? FromTheTop : _cachedFreePb[m], UsedTopPb);
        if (cc.Mode == CompactMode.SyncFull) ResetSkipBits();
        cc.StartTicks = _cx.Options.Clock.GetTimestamp();
        cc.BytesMovedAtStart = _cx.Counters[BytesMoved];
        CompactStatus status = CompactStatus.Continue;
        try
        {
            while (status == CompactStatus.Continue)
            {
                if (migratePb > freePb) { status = CompactStatus.Complete; break; }
                status = CheckFinish(cc);
                if (status != CompactStatus.Continue) break;
                if (!cc.IgnoreSkip && _map.GetSkip(migratePb)) { migratePb++; continue; }
                status = CompactPageblock(cc, migratePb, from, ref freePb);
                from = -1;
                cc.Worked = true;   // a pageblock processed: the time budget may stop the run from here on
                if (status == CompactStatus.Continue) migratePb++;
                _cx.BetweenPageblocks?.Invoke();
            }
        }
        finally
        {
            _free.ReturnFreePool();
            // Scanners that met, either in the loop or inside the free scanner (no target left between them), end
            // the zone's pass: the next run starts over from both ends (reset_cached_positions).
            if (status is CompactStatus.Complete or CompactStatus.NoTargets)
            {
                _cachedMigratePb[m] = _firstPb;
                _cachedFreePb[m] = FromTheTop;
                _cachedMigratePage[m] = -1;
            }
            else
            {
                _cachedMigratePb[m] = migratePb;
                _cachedFreePb[m] = Math.Max(freePb, migratePb);
                // Set only when the budget ran out inside the pageblock at migratePb (it was not passed).
                _cachedMigratePage[m] = status == CompactStatus.BudgetExhausted ? _cutAt : -1;
            }
            _cutAt = -1;
            if (cc.Contended) _cx.Counters[ContendedRuns]++;
        }
        return status;
    }

    private CompactStatus CheckFinish(CompactControl cc)
    {
        if (cc.Contended) return CompactStatus.Contended;
        if (cc.CapturePages > 0 && TryCapture(cc)) return CompactStatus.Success;
        if (cc.Proactive && _cx.Score() <= cc.LowWatermark) return CompactStatus.WatermarkReached;
        if (_cx.BudgetSpent(cc)) return CompactStatus.BudgetExhausted;
        return CompactStatus.Continue;
    }

    /// <summary>compaction_capture: when a run of the wanted size is free, take it for the requester before anyone
    /// else can. Checked at pageblock boundaries.</summary>
    private bool TryCapture(CompactControl cc)
    {
        if (!_cx.Acquire(_zone.Lock, cc)) return false;
        try
        {
            int start = _zone.AllocatePagesLocked(cc.CapturePages, MigrateType.Movable);
            if (start < 0) return false;
            _cx.Pages.InitRunLocked(_zone, start, cc.CapturePages, cc.CaptureIndex);
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
    /// by the freeze CAS; the worst a stale read does is skip a unit or try one that is gone. The scan starts at page
    /// <paramref name="from"/> of the pageblock when a budget cut the last one short there (-1: at its start); a run
    /// whose budget runs out among this pageblock's units returns <see cref="CompactStatus.BudgetExhausted"/> with
    /// <c>_cutAt</c> at the first unit left untried.
    /// </summary>
    private CompactStatus CompactPageblock(CompactControl cc, int pb, int from, ref int freePb)
    {
        int start = pb << _map.PageblockOrder, end = start + _map.PageblockPages;
        bool whole = from <= start || from >= end;   // no resume point inside (or a stale one): the whole pageblock
        if (!whole) start = from;
        List<int> units = _units;
        units.Clear();
        int isolatedPages = 0, scanned = 0;
        // The whole pageblock first (lock-free reads), then its units move as one unit of work (UnitMover).
        for (int p = start; p < end;)
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
                    if (d.PinCount > 0) { _cx.Counters[PinnedPagesSkipped] += step; break; }
                    // A run at least as large as the target cannot help form one (the kernel skips compound pages of
                    // order >= cc->order): moving it only costs a copy.
                    if (d.RunPages >= TargetPages(cc)) break;
                    units.Add(p);
                    isolatedPages += step;
                    break;
                case PageKind.SlabHead:
                    if (d.SlabKind != BlockKind.Movable) break;
                    step = Math.Min(_slabs.Classes.PagesPerSlab[d.SlabClass], end - p);
                    if (SlabPinned(p, step)) { _cx.Counters[PinnedPagesSkipped] += step; break; }
                    units.Add(p);
                    isolatedPages += step;
                    break;
            }
            scanned += step;
            p += step;
        }
        CompactStatus status = CompactStatus.Continue;
        if (units.Count > 0)
        {
            _cx.Counters[CompactIsolated] += isolatedPages;
            status = MigrateUnits(cc, units, pb, ref freePb);
        }
        _cx.Counters[CompactMigrateScanned] += scanned;
        if (cc.Daemon) _cx.Counters[CompactDaemonMigrateScanned] += scanned;
        if (units.Count == 0 && whole && !_map.GetSkip(pb))
        {
            _map.SetSkip(pb, true);
            _cx.Counters[SkipBitsSet]++;
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
    /// migrate_pages for a pageblock's units: every unit is tried, the pageblock's units together (one batch and one
    /// barrier per <see cref="UnitMover.MaxBlocks"/> blocks); transient failures (pinned since the check, busy, owner
    /// says try again, a cache holds a slot) are retried for a bounded number of passes (3 asynchronous, 10
    /// synchronous), together again; what still fails is counted in pgmigrate_fail and left where it is.
    /// </summary>
    private CompactStatus MigrateUnits(CompactControl cc, List<int> units, int migratePb, ref int freePb)
    {
        int passes = cc.Mode == CompactMode.Async ? Compactor.AsyncPasses : Compactor.SyncPasses;
        List<int> pending = _pending, retry = _retry;
        List<(int head, MigrateResult result)> results = _results;
        pending.Clear();
        pending.AddRange(units);
        for (int pass = 0; pass < passes && pending.Count > 0; pass++)
        {
            // A retry pass only while the budget lasts: its units are not in address order, so a cut inside one
            // would not advance the resume point; what is left counts as failed, as after the last pass.
            if (pass > 0 && !cc.WholeBatches && _cx.BudgetSpent(cc)) break;
            results.Clear();
            int tried = _unitMover.MoveUnits(cc, pending, migratePb, ref freePb, results);
            retry.Clear();
            foreach ((int head, MigrateResult r) in results)
            {
                // NoMemory: no free range of the unit's size among the targets (see IsolateTargets). The unit stays
                // and is not retried in this pass; the others go on.
                if (IsTransient(r)) retry.Add(head);
                else if (r is MigrateResult.OwnerFailed) _cx.Counters[PgmigrateFail] += UnitPages(head);
            }
            if (cc.Contended) return CompactStatus.Contended;
            if (tried < pending.Count)
            {
                // The budget ran out inside the pageblock: the next run resumes at the lowest unit not tried. Units
                // that failed transiently below it wait for the next pass over the zone.
                int cut = int.MaxValue;
                for (int i = tried; i < pending.Count; i++) cut = Math.Min(cut, pending[i]);
                _cutAt = cut;
                return CompactStatus.BudgetExhausted;
            }
            (pending, retry) = (retry, pending);
        }
        foreach (int head in pending) _cx.Counters[PgmigrateFail] += UnitPages(head);
        // The free scanner met the migrate scanner and the pool is used up: nothing can move any more this pass.
        if (freePb <= migratePb && _free.PoolPages == 0) return CompactStatus.NoTargets;
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
}
