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
/// The compactor of the movable zone (native-layout.md, "Compaction"): the triggers and their control (this class),
/// over one class per concern, each with its own state: deferral (<see cref="CompactionDeferral"/>), the migrate
/// scanner (<see cref="MigrateScanner"/>), the free scanner and its pool (<see cref="FreeScanner"/>,
/// <see cref="FreePool"/>), the slab side of a move (<see cref="SlabMover"/>), slab consolidation
/// (<see cref="SlabConsolidation"/>), the waste-driven run (<see cref="WasteRun"/>) and the memory limit's slices
/// (<see cref="LimitSlices"/>); what they share is <see cref="CompactionContext"/>. The counters are
/// <see cref="CompactionCounters"/>, the indices <see cref="Fragmentation"/>.
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

    /// <summary>One compaction at a time (see the remarks).</summary>
    public Lock RunLock => _cx.RunLock;
    /// <summary>The heap's live counters: the compactor writes its own under RunLock; the reclaimer (under its trim lock)
    /// and allocations keeping the memory limit add theirs with interlocked adds; all are read racily.</summary>
    public CompactionCounters Counters => _cx.Counters;
    private readonly CompactionContext _cx;
    private readonly ThreadCaches _caches;
    private readonly CompactionDeferral _deferral;
    private readonly FreeScanner _freeScanner;
    private readonly SlabMover _slabMover;
    private readonly MigrateScanner _migrateScanner;
    private readonly SlabConsolidation _consolidation;
    private readonly WasteRun _waste;
    private readonly LimitSlices _limit;
    private int _proactiveDefer;
    private bool _proactiveResume;   // the proactive pass stopped at its slice's end above the low watermark: it resumes

    public Compactor(CompactionSettings options, PageAllocator pages, SlabAllocator movableSlabs, HandleTable handles, Migrator migrator, ThreadCaches caches,
                     LiveFootprint footprint, CompactionCounters counters)
    {
        _cx = new CompactionContext(options, pages, movableSlabs, handles, migrator, counters);
        _caches = caches;
        _deferral = new CompactionDeferral(pages.Map.MaxOrder);
        _freeScanner = new FreeScanner(_cx);
        _slabMover = new SlabMover(_cx);
        _migrateScanner = new MigrateScanner(_cx, _freeScanner, _slabMover);
        _consolidation = new SlabConsolidation(_cx, _slabMover);
        _waste = new WasteRun(_cx, caches, footprint, _consolidation, _migrateScanner);
        _limit = new LimitSlices(_cx, caches, _consolidation, _migrateScanner);
    }

    // ------------------------------------------------------------------ triggers

    /// <summary>Explicit full compaction (/proc/sys/vm/compact_memory): consolidate every movable size class, then
    /// compact the whole movable zone synchronously, ignoring and resetting skip bits. Takes RunLock.</summary>
    public void CompactAll()
    {
        if (RunLock.IsHeldByCurrentThread) return;   // called from an owner callback of a running compaction
        lock (RunLock)
        {
            using var caches = new CacheGuard(_caches, _cx.Options);
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
        int order = Math.Min(Zone.OrderFor(pages), _cx.Map.MaxOrder + 1);
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
            using var caches = new CacheGuard(_caches, _cx.Options);
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
    /// The compaction half of one wake of the background compactor (kcompactd), one slice of work at most: during a
    /// waste-driven run, that run's slice; otherwise a slice of the daemon's own pass (<see cref="DaemonSliceLocked"/>:
    /// consolidate the size classes worth it; if the fragmentation score is above the high watermark, compact until it
    /// falls to the low one, backing off for 64 wakes when a pass made no progress).
    /// Skips the wake if another compaction runs or this thread is inside one. Takes RunLock with a try-lock.
    /// Returns what the wake did, for the reclaimer's half of it, and any change of the waste-driven run's CPU share.
    /// </summary>
    public BackgroundStepResult BackgroundStep()
    {
        if (RunLock.IsHeldByCurrentThread || !RunLock.TryEnter()) return new(BackgroundStepOutcome.Skipped);
        try
        {
            BackgroundStepStarting?.Invoke();
            Counters[CompactDaemonWake]++;
            CompactionSettings o = _cx.Options;
            (int low, int high) = Fragmentation.Watermarks(o.Proactiveness);
            // While a waste-driven run is under way, its slice is the whole wake: it consolidates every class and
            // compacts the zone itself, with the caches on, in at most CompactionSliceTime. The run is decided first,
            // so that the wake that starts one is a slice too, not a drain and a consolidation before its first slice.
            bool wasteRun = _waste.DecideLocked();
            int score = wasteRun ? 0 : Score();
            bool proactive = !wasteRun && o.Proactiveness > 0 && _proactiveDefer == 0 && (score > high || (_proactiveResume && score > low));
            if (_proactiveDefer > 0) _proactiveDefer--;
            // An idle wake costs no drain: the daemon's pass runs only when some class is worth consolidating or a
            // proactive pass is due (otherwise every wake would drain the caches, leaving part-used slabs to move).
            if (!wasteRun && (proactive || _consolidation.AnyClassWorthConsolidating())) DaemonSliceLocked(proactive, score, low);
            else EndDaemonPassLocked();
            bool sliced = _waste.SliceLocked();
            (int change, int divisor) = _waste.TakeShareChange();
            return new(sliced ? BackgroundStepOutcome.WasteSlice : BackgroundStepOutcome.Ran, change, divisor);
        }
        finally
        {
            RunLock.Exit();
        }
    }

    /// <summary>
    /// The daemon's own pass (kcompactd: consolidation of the classes worth it, then the proactive pass when
    /// <paramref name="proactive"/>), one slice of it per wake: at most <c>CompactionSliceTime</c>, or
    /// <c>CompactionBudgetTime</c> when that is set lower. A pass spans as many wakes as it needs (the background thread
    /// paces them like a waste-driven run's while it is under way: <see cref="DaemonPassUnderWay"/>): the consolidation
    /// resumes from its cursor and the proactive pass from the scanners' cached positions. While both have work, the
    /// consolidation gets half of each slice, so that the proactive pass advances too. The caches stay on, as in a
    /// waste-driven slice: a pass first drains them, in steps within its slices (<see cref="ThreadCaches.DrainSome"/>),
    /// so that what they held goes back and can move; slots they take afterwards only make a few slab moves fail
    /// (cache-held), which a later pass retries. Disabling them for the pass sent every allocation of the mutators to
    /// the class locks the consolidation holds, and a full drain took milliseconds in one go. Caller holds RunLock.
    /// </summary>
    private void DaemonSliceLocked(bool proactive, int score, int low)
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        CompactionSettings o = _cx.Options;
        TimeProvider clock = o.Clock;
        long slice = o.CompactionBudgetTime > TimeSpan.Zero ? Math.Min(o.SliceTicks, o.Ticks(o.CompactionBudgetTime)) : o.SliceTicks;
        long start = clock.GetTimestamp();
        if (!_daemonPass)
        {
            Volatile.Write(ref _daemonPass, true);
            _daemonDrain = default;
            _daemonDrained = false;
            _daemonConsolidated = false;
            _daemonCursor.Reset();
        }
        if (!_daemonDrained)
        {
            if (!_caches.DrainSome(ref _daemonDrain, clock, start + slice)) return;   // the slice went to the drain
            _daemonDrained = true;
        }
        bool worked = false;
        if (!_daemonConsolidated)
        {
            var consolidation = new CompactControl
            {
                Mode = CompactMode.SyncLight, Daemon = true, BudgetBytes = o.CompactionBudgetBytes,
                BudgetTicks = proactive ? Math.Max(1, slice / 2) : slice, StartTicks = start, BytesMovedAtStart = Counters[BytesMoved],
            };
            _daemonConsolidated = _consolidation.ConsolidateSlabs(consolidation, _daemonCursor);
            worked = consolidation.Worked;
        }
        bool zoneDone = true;
        if (proactive)
        {
            // A pass starts above the high watermark; one that its slice cut short resumes at the next wake (from the
            // cached scanner positions) for as long as the score is above the low watermark. proactive_compact_node:
            // skip hints ignored, synchronous-light; a fresh pass covers the whole zone. It runs in what is left of the
            // slice, or at least a pageblock when the slice has done nothing yet, so that every wake advances it.
            long left = slice - (clock.GetTimestamp() - start);
            zoneDone = false;
            if (left > 0 || !worked)
            {
                bool fresh = !_proactiveResume;
                if (fresh) _proactiveStartScore = score;
                CompactStatus status = CompactZone(new CompactControl
                {
                    Mode = CompactMode.SyncLight, Proactive = true, Daemon = true, LowWatermark = low,
                    WholeZone = fresh, IgnoreSkipHint = true,
                    BudgetBytes = o.CompactionBudgetBytes, BudgetTicks = Math.Max(1, left),
                });
                int after = Score();
                _proactiveResume = status == CompactStatus.BudgetExhausted && after > low;
                // Judged on the whole pass, not on its last slice: a pass that did not lower the score from where it
                // started backs off.
                _proactiveDefer = _proactiveResume || after < _proactiveStartScore ? 0 : ProactiveDeferWakes;
                zoneDone = !_proactiveResume;
            }
        }
        if (_daemonConsolidated && zoneDone) EndDaemonPassLocked();
    }

    /// <summary>Ends the daemon's pass: the next wake with work starts a fresh one (drain, consolidation from the first
    /// class, a proactive pass over the whole zone). Called when the pass is done, and at every wake that does not run
    /// a slice of it (idle, or a waste-driven run's), so that a pass left midway (its classes no longer worth it, its
    /// score at the low watermark, a run taking over) never resumes later from a stale cursor without a drain.
    /// Caller holds RunLock.</summary>
    private void EndDaemonPassLocked()
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        Volatile.Write(ref _daemonPass, false);
        _proactiveResume = false;
    }

    /// <summary>True while the daemon's own pass is under way (started, not done): the background thread then paces its
    /// wakes by <c>CompactionCpuShare</c>, as during a waste-driven run, instead of sleeping its interval between
    /// slices. Racy read (a bool; a stale value only shifts one wake).</summary>
    public bool DaemonPassUnderWay => Volatile.Read(ref _daemonPass);

    /// <summary>The proactive score (see <see cref="CompactionContext.Score"/>).</summary>
    public int Score() => _cx.Score();

    /// <summary>True while a waste-driven run is under way: the background thread then wakes after a slice's CPU
    /// share instead of its interval. Racy read (a bool; a stale value only shifts one wake).</summary>
    public bool WasteRunActive => _waste.Active;

    /// <summary>What the waste-driven run's CPU share is divided by (see <see cref="WasteRun.ShareDivisor"/>). Racy read.</summary>
    public int WasteShareDivisor => _waste.ShareDivisor;

    /// <summary>Resident bytes over live bytes now, and the bytes between them (see <see cref="WasteRun.Waste"/>).</summary>
    public (double ratio, long wasted) Waste() => _waste.Waste();

    /// <summary>A slice of compaction for the memory limit (see <see cref="LimitSlices.Slice"/>). Takes RunLock.</summary>
    public (long moved, bool budgetSpent) LimitSlice(long budgetTicks) => _limit.Slice(budgetTicks);

    /// <summary>compact_zone (see <see cref="MigrateScanner.CompactZone"/>). Caller holds RunLock.</summary>
    public CompactStatus CompactZone(CompactControl cc) => _migrateScanner.CompactZone(cc);

    /// <summary>zs_compact for every movable class (see <see cref="SlabConsolidation.ConsolidateSlabs"/>): true when
    /// every class was consolidated. Caller holds RunLock.</summary>
    public bool ConsolidateSlabs(CompactControl cc) => _consolidation.ConsolidateSlabs(cc);

    /// <summary>The daemon's consolidation, resumed wake after wake (see <see cref="ConsolidationCursor"/>).</summary>
    private readonly ConsolidationCursor _daemonCursor = new();
    private bool _daemonPass;           // the daemon's pass is under way (see DaemonPassUnderWay)
    private DrainCursor _daemonDrain;   // ... where its drain of the caches goes on
    private bool _daemonDrained;        // ... which is done
    private bool _daemonConsolidated;   // ... and so is its consolidation of the classes
    private int _proactiveStartScore;   // the score when the current proactive pass started

    /// <summary>__reset_isolation_suitable (see <see cref="MigrateScanner.ResetSkipBits"/>).</summary>
    public void ResetSkipBits() => _migrateScanner.ResetSkipBits();
}

/// <summary>Disables and drains the per-thread caches for the length of a run (slots they hold make slab
/// migration fail), unless the heap's options keep them on.</summary>
internal readonly struct CacheGuard : IDisposable
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
