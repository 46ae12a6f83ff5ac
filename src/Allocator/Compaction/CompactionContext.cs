using System.Diagnostics;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;
using static Compaction.Allocator.Diagnostics.CompactionCounter;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// What every part of the compactor shares (the kernel's zone and the fields of compact_control that outlive a run):
/// the layers it works on, the counters, <see cref="RunLock"/>, the one migration batch, and the helpers each part
/// uses (taking a lock in the run's mode, migrating a batch and counting it, the budget check). The parts keep their
/// own state: <see cref="MigrateScanner"/>, <see cref="FreeScanner"/>, <see cref="SlabMover"/>,
/// <see cref="SlabConsolidation"/>, <see cref="WasteRun"/>, <see cref="LimitSlices"/>; <see cref="Compactor"/> is
/// the triggers over them.
/// </summary>
/// <remarks>
/// Everything here is protected by <see cref="RunLock"/> except the counters (read racily, see
/// <see cref="CompactionCounters"/>) and the layers' own locks.
/// </remarks>
internal sealed class CompactionContext
{
    /// <summary>One compaction at a time; the outermost lock of the heap (native-layout.md, "Lock ordering").</summary>
    public readonly Lock RunLock = new();
    public readonly CompactionCounters Counters;
    public readonly CompactionSettings Options;
    public readonly PageAllocator Pages;
    public readonly PageMap Map;
    public readonly Zone Zone;
    public readonly SlabAllocator Slabs;
    public readonly HandleTable Handles;
    public readonly Migrator Migrator;
    /// <summary>The batch every part fills and migrates, one at a time (RunLock).</summary>
    public readonly MigrationBatch Batch = new();
    /// <summary>The movable zone's first pageblock.</summary>
    public readonly int FirstPb;

    // Test hooks (Compactor.TestHooks.cs); nothing in the product sets them.
    public Action? BetweenPageblocks;
    public Action? RunDestinationWanted;
    public Action<SlabClass>? BetweenConsolidationSources;

    public CompactionContext(CompactionSettings options, PageAllocator pages, SlabAllocator movableSlabs, HandleTable handles, Migrator migrator,
                             CompactionCounters counters)
    {
        Counters = counters;
        Options = options;
        Pages = pages;
        Map = pages.Map;
        Zone = pages.Movable ?? throw new ArgumentException("the heap has no movable zone", nameof(pages));
        Slabs = movableSlabs;
        Handles = handles;
        Migrator = migrator;
        FirstPb = Zone.Start >> Map.PageblockOrder;
    }

    /// <summary>
    /// The last pageblock below the zone's frontier: the top of the range the scanners walk. Above the frontier the
    /// zone was never handed out (free, uncommitted, descriptors untouched), so there is nothing to move and no
    /// target worth moving to. Lock-free read of <see cref="Zone.Frontier"/>: it is written under the zone lock and
    /// only rises, so a stale value only leaves out pageblocks handed out since (a later run scans them).
    /// </summary>
    public int UsedTopPb => (Zone.Frontier >> Map.PageblockOrder) - 1;

    /// <summary>The proactive score: extfrag at pageblock order of the movable zone, in percent. Lock-free: the free
    /// counts are racy reads of 64-bit counters (see <see cref="Zone.FreeBlocks"/>); a stale view only shifts a
    /// heuristic by a block.</summary>
    public int Score()
    {
        Span<long> free = stackalloc long[Map.MaxOrder + 1];
        for (int o = 0; o <= Map.MaxOrder; o++) free[o] = Zone.FreeBlocks(o, MigrateType.Movable) + Zone.FreeBlocks(o, MigrateType.Unmovable);
        return Fragmentation.ExtfragForOrder(free, Map.PageblockOrder);
    }

    /// <summary>True when the run has moved its budget of bytes, or has spent its budget of time after at least one
    /// unit of work (<see cref="CompactControl.Worked"/>: every slice advances).</summary>
    public bool BudgetSpent(CompactControl cc) =>
        (cc.BudgetBytes > 0 && Counters[BytesMoved] - cc.BytesMovedAtStart >= cc.BudgetBytes)
        || (cc.BudgetTicks > 0 && cc.Worked && Options.Clock.GetTimestamp() - cc.StartTicks >= cc.BudgetTicks);

    /// <summary>True when the run has a time budget and has spent it, work done or not.</summary>
    public bool TimeSpent(CompactControl cc) => cc.BudgetTicks > 0 && Options.Clock.GetTimestamp() - cc.StartTicks >= cc.BudgetTicks;

    // ------------------------------------------------------------------ batches that fit a slice

    /// <summary>The work queued in <see cref="Batch"/> so far, in block equivalents (<see cref="Cost"/>): what
    /// <see cref="BatchFillsBudget"/> weighs against the time left. Reset by <see cref="BeginBatch"/>.</summary>
    public long QueuedCost { get; private set; }

    /// <summary>Clock ticks one block equivalent of migration took, a moving average over the batches migrated so far
    /// (0 until the first; protected by RunLock). A batch of small blocks costs its blocks (freeze, entry and
    /// reverse-map word, copy); a run costs its bytes.</summary>
    private double _ticksPerCost;

    /// <summary>The cost of migrating <paramref name="blocks"/> blocks of <paramref name="bytes"/> bytes in all, in
    /// block equivalents: one per block and one per 4 KiB copied (a small block's bookkeeping costs about what a
    /// page's copy does).</summary>
    public static long Cost(int blocks, long bytes) => blocks + (bytes >> 12);

    /// <summary>Empties <see cref="Batch"/> for the next unit of work. Caller holds RunLock.</summary>
    public void BeginBatch()
    {
        Batch.Clear();
        QueuedCost = 0;
    }

    /// <summary>Counts work queued in <see cref="Batch"/> (see <see cref="Cost"/>). Caller holds RunLock.</summary>
    public void Queued(int blocks, long bytes) => QueuedCost += Cost(blocks, bytes);

    /// <summary>
    /// True when the batch holds work and what it holds would take the run past its time budget: the time spent since
    /// the run started plus the queued work at the migration speed measured so far. The caller then stops filling and
    /// migrates, so that a slice ends within about one source slab or unit of its budget, where a batch cut at
    /// <see cref="UnitMover.MaxBlocks"/> blocks alone (a few milliseconds of small blocks) overran a 0.5 ms slice
    /// several times over. An empty batch is never full, so every batch moves at least one slab or unit. A run without
    /// a time budget (an explicit <c>Compact()</c>) fills its batches whole.
    /// </summary>
    public bool BatchFillsBudget(CompactControl cc)
    {
        if (cc.BudgetTicks <= 0 || QueuedCost == 0 || cc.WholeBatches) return false;
        long elapsed = Options.Clock.GetTimestamp() - cc.StartTicks;
        return elapsed + QueuedCost * _ticksPerCost >= cc.BudgetTicks;
    }

    /// <summary>Runs the migration primitive on <see cref="Batch"/> and counts its outcomes, bytes and barriers; the
    /// time it took updates the migration speed <see cref="BatchFillsBudget"/> predicts with.
    /// Caller holds RunLock and no other lock.</summary>
    public int Migrate()
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        MigrationBatch batch = Batch;
        long start = Options.Clock.GetTimestamp();
        int moved = Migrator.MigrateBatch(batch);
        if (QueuedCost > 0)
        {
            // An average over about four batches: one batch slowed by a preemption or a page fault storm moves the
            // prediction a quarter of the way; a clock that goes backwards (a test's) counts as no time.
            double sample = Math.Max(0, Options.Clock.GetTimestamp() - start) / (double)QueuedCost;
            _ticksPerCost = _ticksPerCost == 0 ? sample : _ticksPerCost + (sample - _ticksPerCost) / 4;
        }
        Counters[BytesMoved] += batch.BytesMoved;
        Counters[Barriers] += batch.Barriers;
        for (int i = 0; i < batch.Count; i++) CountOutcome(batch[i].Result);
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
    public bool Acquire(Lock l, CompactControl cc)
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
}
