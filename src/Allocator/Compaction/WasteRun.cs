using System.Diagnostics;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The waste-driven run (Redis's active defrag, Anchorage; native-layout.md, section 9, "Waste-driven runs"): its
/// hysteresis on resident / live bytes, its cycles (consolidate the classes, then one pass over the zone) cut into
/// slices, and its back-off. Its state is protected by RunLock, except <see cref="Active"/>, read racily.
/// </summary>
internal sealed class WasteRun
{
    private readonly CompactionContext _cx;
    private readonly ThreadCaches _caches;
    private readonly LiveFootprint _footprint;
    private readonly SlabConsolidation _consolidation;
    private readonly MigrateScanner _scanner;
    private bool _active;          // a waste-driven run: started above WasteHighRatio, not yet at WasteLowRatio
    private long _cycleResident;   // the resident estimate when the current cycle started
    private bool _zonePhase;       // ... and its cycle has consolidated the classes: now the zone pass
    private bool _resume;          // ... which the last slice's budget cut short (it resumes)
    private long _cycleMoved;      // bytes moved in the current cycle
    private DrainCursor _drain;    // where the cycle's drain of the caches goes on, slice after slice
    private readonly ConsolidationCursor _consolidationCursor = new();   // where the cycle's consolidation goes on
    private int _defer;            // wakes to skip after a slice that could move nothing
    private int _backoff;          // the run's CPU share is CompactionCpuShare >> _backoff (0..MaxBackoff)
    private long _wastedAtBackoff; // bytes wasted when the share was last lowered
    private int _shareChange;      // +1 / -1: the last cycle lowered / restored the share (the caller's event), else 0
    private bool _sliceDue;        // DecideLocked found the run under way in this wake: SliceLocked runs one slice
    private bool _overCap;         // ... and the waste was above the retained-bytes cap

    /// <summary>The lowest share a run backs off to: an eighth of <c>CompactionCpuShare</c>.</summary>
    public const int MaxBackoff = 3;

    public WasteRun(CompactionContext cx, ThreadCaches caches, LiveFootprint footprint, SlabConsolidation consolidation, MigrateScanner scanner)
    {
        _cx = cx;
        _caches = caches;
        _footprint = footprint;
        _consolidation = consolidation;
        _scanner = scanner;
    }

    /// <summary>True while a waste-driven run is under way: the background thread then wakes after a slice's CPU
    /// share instead of its interval. Racy read (a bool; a stale value only shifts one wake).</summary>
    public bool Active => Volatile.Read(ref _active);

    /// <summary>What the run's CPU share is divided by: 1, or 2, 4, 8 after cycles that gave back little (see
    /// <see cref="SliceLocked"/>). The background thread spaces its slices by it. Racy read (an int; a stale value
    /// only spaces one wake differently).</summary>
    public int ShareDivisor => 1 << Volatile.Read(ref _backoff);

    /// <summary>Whether the last slice's cycle lowered (+1) or restored (-1) the run's share, and the divisor then;
    /// cleared by reading. For the layer above's event. Caller holds RunLock.</summary>
    public (int change, int divisor) TakeShareChange()
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        int change = _shareChange;
        _shareChange = 0;
        return (change, ShareDivisor);
    }

    /// <summary>Resident bytes (the arena's estimate: committed less purged free runs) over the bytes live blocks
    /// occupy now (their slots and run pages: <see cref="LiveFootprint"/>), and the bytes between them: the waste
    /// compaction can remove (racy: counters read without locks; a heuristic's input).</summary>
    public (double ratio, long wasted) Waste()
    {
        long resident = _cx.Pages.ResidentBytesEstimate;
        long live = Math.Max(1, _footprint.Bytes());
        return ((double)resident / live, resident - live);
    }

    /// <summary>
    /// Decides, once per wake and before anything else the wake does, whether this wake belongs to a waste-driven run
    /// (Redis's active defrag, Anchorage): with hysteresis on resident / live, a run starts above WasteHighRatio (with
    /// enough bytes at stake) or above the retained-bytes cap, and ends at WasteLowRatio (or too few bytes) once the
    /// cap is kept. A wake of a run is one <see cref="SliceLocked"/> and nothing else: deciding first means the wake
    /// that starts a run does not run the daemon's own consolidation (unsliced, with the caches disabled) before it.
    /// Returns <see cref="Active"/>. Caller holds RunLock.
    /// </summary>
    public bool DecideLocked()
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        CompactionSettings o = _cx.Options;
        _sliceDue = false;
        if (o.WasteHighRatio == 0) return false;
        if (_defer > 0) { _defer--; return false; }
        (double ratio, long wasted) = Waste();
        _overCap = wasted > o.RetainedBytesLimit;
        if (!_active && ((ratio > o.WasteHighRatio && wasted >= o.WasteMinBytes) || _overCap))
        {
            _active = true;
            _zonePhase = false;
            _cycleMoved = 0;
            _drain = default;
            _consolidationCursor.Reset();
        }
        if (_active && !_overCap && (ratio <= o.WasteLowRatio || wasted < o.WasteMinBytes / 2)) _active = false;
        if (!_active) return false;
        // Waste that grew by WasteMinBytes since the share was lowered is new work worth the full share again.
        if (_backoff > 0 && wasted >= _wastedAtBackoff + Math.Max(o.WasteMinBytes, 1))
        {
            Volatile.Write(ref _backoff, 0);
            _shareChange = -1;
            _cx.Counters[WasteShareRestores]++;
        }
        _sliceDue = true;
        return true;
    }

    /// <summary>
    /// The waste-driven half of a wake, when <see cref="DecideLocked"/> found a run under way: a slice of at most the
    /// heap's CompactionSliceTime. A run goes in cycles, each what an explicit compaction does in one go, cut into
    /// slices: consolidate the size classes until none is worth it, then one pass over the whole zone (resumed slice
    /// after slice). A cycle that moved nothing ends the run and backs off for <see cref="Compactor.ProactiveDeferWakes"/>
    /// wakes (what is left is pinned or unmovable); one that moved much and gave back little halves the run's CPU share
    /// (<see cref="ShareDivisor"/>, down to an eighth), and waste that grows again restores it. The heap gives back
    /// what each slice emptied after the step (the layer above this one). Returns whether a slice ran. Caller holds
    /// RunLock.
    /// </summary>
    public bool SliceLocked()
    {
        Debug.Assert(_cx.RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        if (!_sliceDue) return false;
        _sliceDue = false;   // one slice per decision
        CompactionSettings o = _cx.Options;
        bool overCap = _overCap;
        _cx.Counters[WasteWakes]++;
        long movedBefore = _cx.Counters[BytesMoved];
        long start = _cx.Options.Clock.GetTimestamp();
        long slice = o.SliceTicks;
        bool cycleEnded = false;
        // The caches stay on during a slice: disabling them for every slice (every few milliseconds) would send the
        // mutators to the slow path a tenth of the time. A cycle drains them when it starts (each slice until the
        // cycle's first move, so normally once), so what they held goes back and can move; slots they take afterwards
        // only make a few slab moves fail (cache-held), which a later cycle retries. A drain goes in steps within the
        // slice's budget: a thread that freed many blocks leaves milliseconds of unbinding in the depot, which then
        // takes slices of its own.
        if (!_zonePhase && _cycleMoved == 0)
        {
            if (!_caches.DrainSome(ref _drain, _cx.Options.Clock, start + slice)) return true;   // the slice went to it
            _drain = default;   // done: a later slice that still finds nothing moved drains afresh
            _consolidationCursor.Tried.Clear();   // the slabs found cache-held may move now
            _cycleResident = _cx.Pages.ResidentBytesEstimate;
        }
        bool worked = false;   // a unit of work was done in this slice
        if (!_zonePhase)
        {
            // Not a daemon pass here: every class with a slab to spare is consolidated, as an explicit compaction
            // does (the daemon's own pass leaves classes below its worth-it heuristic alone).
            var cc = new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = slice, StartTicks = start, BytesMovedAtStart = movedBefore };
            bool done = _consolidation.ConsolidateSlabs(cc, _consolidationCursor);
            worked = cc.Worked;
            if (done) { _zonePhase = true; _resume = false; }   // every class consolidated
        }
        long left = slice - (_cx.Options.Clock.GetTimestamp() - start);
        // The zone pass runs while time is left, and in any slice that has done nothing yet (at least a pageblock), so
        // that a slice whose clock ran out before any work still advances the pass.
        if (_zonePhase && (left > 0 || !worked))
        {
            CompactStatus status = _scanner.CompactZone(new CompactControl
            {
                // Counted as waste wakes, not in the kernel's kcompactd counters (compact_daemon_*).
                Mode = CompactMode.SyncLight, WholeZone = !_resume, IgnoreSkipHint = true, BudgetTicks = Math.Max(1, left),
            });
            _resume = status == CompactStatus.BudgetExhausted;
            cycleEnded = !_resume;
        }
        long moved = _cx.Counters[BytesMoved] - movedBefore;
        _cx.Counters[WasteBytesMoved] += moved;
        _cycleMoved += moved;
        if (!cycleEnded) return true;
        // Progress and back-off: a cycle that moved much and gave back little (resident bytes fell by less than a
        // quarter of what it moved, the slices' releases counted) lowers the run's share one step; the scanners still
        // advance (each cycle is one whole pass), only more slowly.
        long freed = _cycleResident - _cx.Pages.ResidentBytesEstimate;
        if (_cycleMoved > 0 && freed < _cycleMoved / 4 && _backoff < MaxBackoff)
        {
            Volatile.Write(ref _backoff, _backoff + 1);
            _wastedAtBackoff = Waste().wasted;
            _shareChange = 1;
            _cx.Counters[WasteBackoffs]++;
        }
        // A cycle that moved nothing ends the run; so does one that, driven by the retained-bytes cap alone, did not
        // lower resident memory (what is left over the cap is rounding and unmovable memory that no move removes,
        // and a heap in constant churn would otherwise keep a run going for ever).
        if (_cycleMoved == 0 || (overCap && _cx.Pages.ResidentBytesEstimate >= _cycleResident))
        {
            _active = false;
            _defer = Compactor.ProactiveDeferWakes;
        }
        _zonePhase = false;   // another cycle, if the run goes on
        _cycleMoved = 0;
        _drain = default;
        _consolidationCursor.Reset();
        return true;
    }
}
