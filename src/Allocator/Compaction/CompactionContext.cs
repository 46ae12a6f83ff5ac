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

    /// <summary>Runs the migration primitive on <see cref="Batch"/> and counts its outcomes, bytes and barriers.
    /// Caller holds RunLock and no other lock.</summary>
    public int Migrate()
    {
        Debug.Assert(RunLock.IsHeldByCurrentThread, "caller holds RunLock");
        MigrationBatch batch = Batch;
        int moved = Migrator.MigrateBatch(batch);
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
