using System.Diagnostics;
using Compaction.Allocator.Caches;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The memory limit's slices of compaction (native-layout.md, section 9, "The memory limit"): consolidation, then a
/// zone pass resumed slice after slice. Its phase is protected by RunLock.
/// </summary>
internal sealed class LimitSlices
{
    private readonly CompactionContext _cx;
    private readonly ThreadCaches _caches;
    private readonly SlabConsolidation _consolidation;
    private readonly MigrateScanner _scanner;
    private bool _zonePhase;    // the classes are consolidated, the zone pass is next
    private bool _resume;       // ... and the last slice's budget cut that pass short (it resumes)
    private readonly ConsolidationCursor _consolidationCursor = new();   // where the slices' consolidation goes on

    public LimitSlices(CompactionContext cx, ThreadCaches caches, SlabConsolidation consolidation, MigrateScanner scanner)
    {
        _cx = cx;
        _caches = caches;
        _consolidation = consolidation;
        _scanner = scanner;
    }

    /// <summary>
    /// A slice of compaction for the memory limit, on an allocating thread whose allocation found the limit in the way
    /// (native-layout.md, section 9, "The memory limit"): every movable size class with a slab to spare is
    /// consolidated, then the whole movable zone compacted, within <paramref name="budgetTicks"/> (the heap's
    /// <c>CompactionSliceTime</c>), so that slab pages and pageblocks come free inside committed memory (reused by the
    /// allocation) and whole pageblocks empty (decommitted by the caller). Destinations are taken from committed memory
    /// only, so the slice itself commits nothing. Pinned blocks are skipped as always. Takes RunLock, waiting for a
    /// running compaction (a background slice is bounded by the same slice time); returns 0 at once when the calling
    /// thread already holds it (an owner callback's allocation). Returns the bytes moved, and whether the slice left
    /// work (its budget ran out, or it waited for another compaction first: see below).
    /// </summary>
    public (long moved, bool budgetSpent) Slice(long budgetTicks)
    {
        if (_cx.RunLock.IsHeldByCurrentThread) return (0, false);
        // A slice that had to wait for another compaction (another allocation's slice, a background slice) finds the
        // room that one made taken already, or the work done: it may move nothing, yet the heap changed under it. It
        // reports itself unfinished then, so the allocation retries (still at most the caller's slice bound) instead
        // of failing on a stale view; under several allocating threads at the limit that is the common case.
        bool waited = !_cx.RunLock.TryEnter();
        if (waited) _cx.RunLock.Enter();
        try
        {
            using var caches = new CacheGuard(_caches, _cx.Options);   // slots the caches hold would make slab moves fail
            long movedBefore = _cx.Counters[BytesMoved];
            long start = _cx.Options.Clock.GetTimestamp();
            bool spent;
            bool worked = false;   // a unit of work was done in this slice
            if (!_zonePhase)
            {
                var cc = new CompactControl { Mode = CompactMode.SyncLight, BudgetTicks = budgetTicks, StartTicks = start, BytesMovedAtStart = movedBefore, WholeBatches = true };
                bool done = _consolidation.ConsolidateSlabs(cc, _consolidationCursor);
                worked = cc.Worked;
                // Every class consolidated: the next slices compact the zone, so that the slab pages freed here
                // coalesce into the larger blocks new slabs and runs need (and whole pageblocks empty).
                if (done) _zonePhase = true;
            }
            long left = budgetTicks - (_cx.Options.Clock.GetTimestamp() - start);
            spent = left <= 0;
            // As in a waste slice: a slice that has done nothing yet runs at least a pageblock of the zone pass.
            if (_zonePhase && (left > 0 || !worked))
            {
                // Resumed where the last slice stopped (the scanners' cached positions), so that successive slices
                // walk the zone instead of rescanning its bottom; a pass that ends starts the next cycle.
                CompactStatus status = _scanner.CompactZone(new CompactControl
                {
                    Mode = CompactMode.SyncLight, WholeZone = !_resume, IgnoreSkipHint = true, BudgetTicks = Math.Max(1, left),
                    WholeBatches = true,
                });
                _resume = status == CompactStatus.BudgetExhausted;
                spent = _resume;
                if (!_resume) _zonePhase = false;
            }
            long moved = _cx.Counters[BytesMoved] - movedBefore;
            _cx.Counters[LimitBytesMoved] += moved;
            return (moved, spent || waited);
        }
        finally
        {
            _cx.RunLock.Exit();
        }
    }
}
