using System.Diagnostics;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The compactor of the movable zone (native-layout.md, "Compaction"). One concern per file: the triggers and their
/// control (this file), deferral (<see cref="CompactionDeferral"/>), the migrate scanner (MigrateScanner.cs), the
/// free scanner and its pool (FreeScanner.cs, <see cref="FreePool"/>), slab consolidation (SlabConsolidation.cs);
/// the counters are <see cref="CompactionCounters"/>, the indices <see cref="Fragmentation"/>.
/// </summary>
/// <remarks>
/// It works on the layers below it only: the page allocator, the movable slabs, the handle table (read), the
/// migrator and the thread caches; it never sees the heap object.
/// Lock ordering: <see cref="RunLock"/> is the outermost lock of the heap (one compaction at a time; recursive, so every
/// entry point refuses to run when the current thread already holds it, as an owner callback would); a run then takes
/// the cache lock (to disable caches), one class lock at a time, and zone locks inside class locks, like the
/// allocator. No lock is held while blocks are frozen or owner callbacks run. All fields are protected by RunLock,
/// except the counters, which are read racily.
/// </remarks>
internal sealed unsafe partial class Compactor
{
    public const int ClusterMax = 32;               // COMPACT_CLUSTER_MAX: pages isolated per migration batch
    public const int MaxDeferShift = CompactionDeferral.MaxDeferShift;
    public const int AsyncPasses = 3;               // migrate_pages: passes over transient failures
    public const int SyncPasses = 10;
    public const int ProactiveDeferWakes = 1 << MaxDeferShift;  // back-off after a pass without progress

    public readonly Lock RunLock = new();
    /// <summary>The heap's live counters: the compactor writes its own under RunLock; the reclaimer (under its trim lock)
    /// and allocations keeping the memory limit add theirs with interlocked adds; all are read racily.</summary>
    public readonly CompactionCounters Counters;
    private readonly CompactionSettings _options;   // the heap's options the compactor uses
    private readonly PageAllocator _pages;
    private readonly PageMap _map;
    private readonly Zone _zone;
    private readonly SlabAllocator _slabs;
    private readonly HandleTable _handles;
    private readonly Migrator _migrator;
    private readonly ThreadCaches _caches;
    private readonly CompactionDeferral _deferral;
    private readonly MigrationBatch _batch = new();
    private readonly int _firstPb;
    private readonly int[] _cachedMigratePb = new int[2];   // [async, sync]: where the next run resumes
    private readonly int[] _cachedFreePb = new int[2];      // ... FromTheTop: at the top of the used range
    private int _proactiveDefer;
    private bool _proactiveResume;   // the last proactive pass ended on its budget above the low watermark
    private bool _wasteActive;       // a waste-driven run: started above WasteHighRatio, not yet at WasteLowRatio
    private long _wasteCycleResident; // the resident estimate when the current cycle started
    private bool _wasteZonePhase;    // ... and its cycle has consolidated the classes: now the zone pass
    private bool _wasteResume;       // ... which the last slice's budget cut short (it resumes)
    private long _wasteCycleMoved;   // bytes moved in the current cycle
    private int _wasteDefer;         // wakes to skip after a slice that could move nothing
    private bool _limitZonePhase;    // memory-limit slices: the classes are consolidated, the zone pass is next
    private bool _limitResume;       // ... and the last slice's budget cut that pass short (it resumes)

    public Compactor(CompactionSettings options, PageAllocator pages, SlabAllocator movableSlabs, HandleTable handles, Migrator migrator, ThreadCaches caches,
                     CompactionCounters counters)
    {
        Counters = counters;
        _options = options;
        _pages = pages;
        _map = pages.Map;
        _zone = pages.Movable ?? throw new ArgumentException("the heap has no movable zone", nameof(pages));
        _slabs = movableSlabs;
        _handles = handles;
        _migrator = migrator;
        _caches = caches;
        _firstPb = _zone.Start >> _map.PageblockOrder;
        ResetCachedPositions();
        _deferral = new CompactionDeferral(_map.MaxOrder);
    }


    // ------------------------------------------------------------------ triggers

    /// <summary>Explicit full compaction (/proc/sys/vm/compact_memory): consolidate every movable size class, then
    /// compact the whole movable zone synchronously, ignoring and resetting skip bits. Takes RunLock.</summary>
    public void CompactAll()
    {
        if (RunLock.IsHeldByCurrentThread) return;   // called from an owner callback of a running compaction
        lock (RunLock)
        {
            using var caches = new CacheGuard(_caches, _options);
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
            if (_deferral.Deferred(order))
            {
                Counters[CompactDeferred]++;
                return -1;
            }
            Counters[CompactStall]++;
            if (_deferral.Restarting(order)) ResetSkipBits();
            using var caches = new CacheGuard(_caches, _options);
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
                Counters[CompactSuccess]++;
                Counters[Captured]++;
                _deferral.Reset(order);
            }
            else
            {
                Counters[CompactFail]++;
                _deferral.Defer(order);
            }
            return captured;
        }
    }

    /// <summary>
    /// The compaction half of one wake of the background compactor (kcompactd): consolidate size classes within the
    /// budget; if the fragmentation score is above the high watermark, compact until it falls to the low one (or the
    /// budget ends), backing off for 64 wakes when a pass made no progress; then a waste-driven slice when one is due.
    /// Skips the wake if another compaction runs or this thread is inside one. Takes RunLock with a try-lock.
    /// Returns what the wake did, for the reclaimer's half of it.
    /// </summary>
    public BackgroundStepOutcome BackgroundStep()
    {
        if (RunLock.IsHeldByCurrentThread || !RunLock.TryEnter()) return BackgroundStepOutcome.Skipped;
        try
        {
            BackgroundStepStarting?.Invoke();
            Counters[CompactDaemonWake]++;
            CompactionSettings o = _options;
            long budgetTicks = o.CompactionBudgetTime == TimeSpan.Zero ? 0 : (long)(o.CompactionBudgetTime.TotalSeconds * _options.Clock.TimestampFrequency);
            (int low, int high) = Fragmentation.Watermarks(o.Proactiveness);
            int score = Score();
            bool proactive = o.Proactiveness > 0 && _proactiveDefer == 0 && (score > high || (_proactiveResume && score > low));
            if (_proactiveDefer > 0) _proactiveDefer--;
            // An idle wake costs no drain: caches are disabled only when some class is worth consolidating or a
            // proactive pass is due (otherwise every wake would drain the caches, leaving part-used slabs to move).
            if (proactive || AnyClassWorthConsolidating())
            {
                using var caches = new CacheGuard(_caches, _options);
                ConsolidateSlabs(new CompactControl { Mode = CompactMode.SyncLight, Daemon = true, BudgetBytes = o.CompactionBudgetBytes, BudgetTicks = budgetTicks, StartTicks = _options.Clock.GetTimestamp(), BytesMovedAtStart = Counters[BytesMoved] });
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
            return WasteSliceLocked() ? BackgroundStepOutcome.WasteSlice : BackgroundStepOutcome.Ran;
        }
        finally
        {
            RunLock.Exit();
        }
    }

    /// <summary>True while a waste-driven run is under way: the background thread then wakes after a slice's CPU
    /// share instead of its interval. Racy read (a bool; a stale value only shifts one wake).</summary>
    public bool WasteRunActive => Volatile.Read(ref _wasteActive);

    /// <summary>Resident bytes (the arena's estimate: committed less purged free runs) over live bytes now, and the
    /// bytes between them (racy: counters read without locks; a heuristic's input).</summary>
    public (double ratio, long wasted) Waste()
    {
        long resident = _pages.ResidentBytesEstimate;
        long live = Math.Max(1, _caches.LiveTotals().bytes);
        return ((double)resident / live, resident - live);
    }

    /// <summary>
    /// The waste-driven half of a wake (Redis's active defrag, Anchorage): with hysteresis on committed / live, a
    /// slice of at most the heap's CompactionSliceTime. A run goes in cycles, each what an explicit
    /// compaction does in one go, cut into slices: consolidate the size classes until none is worth it, then one pass
    /// over the whole zone (resumed slice after slice). A cycle that moved nothing ends the run and backs off for
    /// <see cref="ProactiveDeferWakes"/> wakes (what is left is pinned or unmovable). The heap gives back what each
    /// slice emptied after the step (the layer above this one). Caller holds RunLock.
    /// </summary>
    private bool WasteSliceLocked()
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        CompactionSettings o = _options;
        if (o.WasteHighRatio == 0) return false;
        if (_wasteDefer > 0) { _wasteDefer--; return false; }
        (double ratio, long wasted) = Waste();
        // A run starts above the high ratio (with enough bytes at stake) or above the retained-bytes cap, and ends at
        // the low ratio (or too few bytes) once the cap is kept.
        bool overCap = wasted > o.RetainedBytesLimit;
        if (!_wasteActive && ((ratio > o.WasteHighRatio && wasted >= o.WasteMinBytes) || overCap))
        {
            _wasteActive = true;
            _wasteZonePhase = false;
            _wasteCycleMoved = 0;
        }
        if (_wasteActive && !overCap && (ratio <= o.WasteLowRatio || wasted < o.WasteMinBytes / 2)) _wasteActive = false;
        if (!_wasteActive) return false;

        Counters[WasteWakes]++;
        long movedBefore = Counters[BytesMoved];
        long start = _options.Clock.GetTimestamp();
        long slice = Math.Max(1, (long)(o.CompactionSliceTime.TotalSeconds * _options.Clock.TimestampFrequency));
        bool cycleEnded = false;
        // The caches stay on during a slice: disabling them for every slice (every few milliseconds) would send the
        // mutators to the slow path a tenth of the time. A cycle drains them when it starts (each slice until the
        // cycle's first move, so normally once), so what they held
        // goes back and can move; slots they take afterwards only make a few slab moves fail (cache-held), which a
        // later cycle retries.
        if (!_wasteZonePhase && _wasteCycleMoved == 0)
        {
            _caches.Drain();
            _wasteCycleResident = _pages.ResidentBytesEstimate;
        }
        if (!_wasteZonePhase)
        {
            // Not a daemon pass here: every class with a slab to spare is consolidated, as an explicit compaction
            // does (the daemon's own pass leaves classes below its worth-it heuristic alone).
            var cc = new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = slice, StartTicks = start, BytesMovedAtStart = movedBefore };
            ConsolidateSlabs(cc);
            if (!BudgetSpent(cc)) { _wasteZonePhase = true; _wasteResume = false; }   // every class consolidated
        }
        long left = slice - (_options.Clock.GetTimestamp() - start);
        if (_wasteZonePhase && left > 0)
        {
            CompactStatus status = CompactZone(new CompactControl
            {
                // Counted as waste wakes, not in the kernel's kcompactd counters (compact_daemon_*).
                Mode = CompactMode.SyncLight, WholeZone = !_wasteResume, IgnoreSkipHint = true, BudgetTicks = left,
            });
            _wasteResume = status == CompactStatus.BudgetExhausted;
            cycleEnded = !_wasteResume;
        }
        long moved = Counters[BytesMoved] - movedBefore;
        Counters[WasteBytesMoved] += moved;
        _wasteCycleMoved += moved;
        if (!cycleEnded) return true;
        // A cycle that moved nothing ends the run; so does one that, driven by the retained-bytes cap alone, did not
        // lower resident memory (what is left over the cap is rounding and unmovable memory that no move removes,
        // and a heap in constant churn would otherwise keep a run going for ever).
        if (_wasteCycleMoved == 0 || (overCap && _pages.ResidentBytesEstimate >= _wasteCycleResident))
        {
            _wasteActive = false;
            _wasteDefer = ProactiveDeferWakes;
        }
        _wasteZonePhase = false;   // another cycle, if the run goes on
        _wasteCycleMoved = 0;
        return true;
    }


    /// <summary>
    /// A slice of compaction for the memory limit, on an allocating thread whose allocation found the limit in the way
    /// (native-layout.md, section 9, "The memory limit"): every movable size class with a slab to spare is
    /// consolidated, then the whole movable zone compacted, within <paramref name="budgetTicks"/> (the heap's
    /// <c>CompactionSliceTime</c>), so that slab pages and pageblocks come free inside committed memory (reused by the
    /// allocation) and whole pageblocks empty (decommitted by the caller). Destinations are taken from committed memory
    /// only, so the slice itself commits nothing. Pinned blocks are skipped as always. Takes RunLock, waiting for a
    /// running compaction (a background slice is bounded by the same slice time); returns 0 at once when the calling
    /// thread already holds it (an owner callback's allocation). Returns the bytes moved.
    /// </summary>
    public (long moved, bool budgetSpent) LimitSlice(long budgetTicks)
    {
        if (RunLock.IsHeldByCurrentThread) return (0, false);
        lock (RunLock)
        {
            using var caches = new CacheGuard(_caches, _options);   // slots the caches hold would make slab moves fail
            long movedBefore = Counters[BytesMoved];
            long start = _options.Clock.GetTimestamp();
            bool spent;
            if (!_limitZonePhase)
            {
                var cc = new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = budgetTicks, StartTicks = start, BytesMovedAtStart = movedBefore };
                ConsolidateSlabs(cc);
                spent = BudgetSpent(cc);
                // Every class consolidated: the next slices compact the zone, so that the slab pages freed here
                // coalesce into the larger blocks new slabs and runs need (and whole pageblocks empty).
                if (!spent) _limitZonePhase = true;
            }
            long left = budgetTicks - (_options.Clock.GetTimestamp() - start);
            spent = left <= 0;
            if (_limitZonePhase && left > 0)
            {
                // Resumed where the last slice stopped (the scanners' cached positions), so that successive slices
                // walk the zone instead of rescanning its bottom; a pass that ends starts the next cycle.
                CompactStatus status = CompactZone(new CompactControl
                {
                    Mode = CompactMode.SyncLight, WholeZone = !_limitResume, IgnoreSkipHint = true, BudgetTicks = left,
                });
                _limitResume = status == CompactStatus.BudgetExhausted;
                spent = _limitResume;
                if (!_limitResume) _limitZonePhase = false;
            }
            long moved = Counters[BytesMoved] - movedBefore;
            Counters[LimitBytesMoved] += moved;
            return (moved, spent);
        }
    }

    /// <summary>The proactive score: extfrag at pageblock order of the movable zone, in percent. Lock-free: the free
    /// counts are racy reads of 64-bit counters (see <see cref="Zone.FreeBlocks"/>); a stale view only shifts a
    /// heuristic by a block.</summary>
    public int Score()
    {
        Span<long> free = stackalloc long[_map.MaxOrder + 1];
        for (int o = 0; o <= _map.MaxOrder; o++) free[o] = _zone.FreeBlocks(o, MigrateType.Movable) + _zone.FreeBlocks(o, MigrateType.Unmovable);
        return Fragmentation.ExtfragForOrder(free, _map.PageblockOrder);
    }

    // ------------------------------------------------------------------ helpers of every part

    /// <summary>A cached free-scanner position meaning "start at the top of the used range".</summary>
    private const int FromTheTop = int.MaxValue;

    /// <summary>
    /// The last pageblock below the zone's frontier: the top of the range the scanners walk. Above the frontier the
    /// zone was never handed out (free, uncommitted, descriptors untouched), so there is nothing to move and no
    /// target worth moving to. Lock-free read of <see cref="Zone.Frontier"/>: it is written under the zone lock and
    /// only rises, so a stale value only leaves out pageblocks handed out since (a later run scans them).
    /// </summary>
    private int UsedTopPb => (_zone.Frontier >> _map.PageblockOrder) - 1;

    /// <summary>Runs the migration primitive on a batch and counts its outcomes and bytes. Caller holds RunLock and
    /// no other lock.</summary>
    private int Migrate(MigrationBatch batch)
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        int moved = _migrator.MigrateBatch(batch);
        Counters[BytesMoved] += batch.BytesMoved;
        for (int i = 0; i < batch.Count; i++) CountOutcome(batch.Result[i]);
        return moved;
    }

    /// <summary>Counts one block migration outcome (every attempt, including the ones later retried).</summary>
    private void CountOutcome(MigrateResult result)
    {
        switch (result)
        {
            case MigrateResult.Busy: Counters[MigrateBusy]++; break;
            case MigrateResult.Pinned: Counters[MigratePinnedAfterFreeze]++; break;
            case MigrateResult.Gone: Counters[MigrateGone]++; break;
            case MigrateResult.OwnerRetry: Counters[MigrateOwnerRetry]++; break;
            case MigrateResult.OwnerFailed: Counters[MigrateOwnerFailed]++; break;
        }
    }

    /// <summary>Takes a lock for the compactor: a try-lock in asynchronous mode (a miss marks the run contended), a
    /// blocking one otherwise. Every acquisition is counted (lock_acquisitions).</summary>
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
        Counters[LockAcquisitions]++;
        return true;
    }

    /// <summary>Disables and drains the per-thread caches for the length of a run (slots they hold make slab
    /// migration fail), unless the heap's options keep them on.</summary>
    private readonly struct CacheGuard : IDisposable
    {
        private readonly ThreadCaches? _caches;

        public CacheGuard(ThreadCaches caches, CompactionSettings options)
        {
            if (!options.ThreadCachesDuringMigration)
            {
                caches.Disable();
                _caches = caches;
            }
        }

        public void Dispose() => _caches?.Enable();
    }
}
