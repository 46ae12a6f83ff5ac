using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Compaction;

// Test hooks of the compactor. Nothing in the product reads them.
internal sealed unsafe partial class Compactor
{
    /// <summary>The deferral state (considered, defer shift, order failed).</summary>
    public (int considered, int shift, int orderFailed) Deferral => _deferral.State;

    /// <summary>Called at the start of every background step, with RunLock held and nothing isolated or frozen: a test
    /// throws from it to stand for an exception of the step.</summary>
    internal Action? BackgroundStepStarting;

    /// <summary>Called between two pageblocks of a zone pass (RunLock held, the caches disabled, the free pool holding
    /// isolated pages, nothing frozen): a test throws from it to stand for an exception in the middle of a pass.</summary>
    internal Action? BetweenPageblocks { get => _cx.BetweenPageblocks; set => _cx.BetweenPageblocks = value; }

    /// <summary>Called as a run's destination is about to be taken (CompactionAlloc; no lock held, nothing frozen, the
    /// pageblock's earlier runs holding theirs): a test throws from it to stand for an exception of the free scanner
    /// there (its pool's list failing to grow, say).</summary>
    internal Action? RunDestinationWanted { get => _cx.RunDestinationWanted; set => _cx.RunDestinationWanted = value; }

    /// <summary>Called in a consolidation batch after a source slab was added and the class lock released (RunLock
    /// held, the batch's sources isolated and its destination slots taken, nothing frozen): a test allocates and
    /// frees in the class from another thread there.</summary>
    internal Action<SlabClass>? BetweenConsolidationSources { get => _cx.BetweenConsolidationSources; set => _cx.BetweenConsolidationSources = value; }
}
