using System.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Compaction;

/// <summary>
/// The slab side of a move, shared by the migrate scanner's units (a whole slab into a new slab carved from the free
/// pool) and consolidation (a slab's blocks into the fullest slabs of its class): listing a slab's live blocks, and
/// freeing the slots a batch left behind. Its lists are scratch space protected by RunLock.
/// </summary>
internal sealed unsafe class SlabMover
{
    private readonly CompactionContext _cx;
    private readonly SlabAllocator _slabs;
    private readonly List<(uint index, nint slot)> _handedOut = [];

    /// <summary>The live blocks <see cref="ListLiveBlocksLocked"/> found: entry, state word, slot.</summary>
    public readonly List<(uint index, long state, nint slot)> Live = [];

    public SlabMover(CompactionContext cx)
    {
        _cx = cx;
        _slabs = cx.Slabs;
    }

    /// <summary>
    /// Lists the live movable blocks of a slab into <see cref="Live"/>: handed-out slots whose reverse-map entry is
    /// allocated, movable, not frozen and still at that slot. Caller holds the class lock (so the slot lists are
    /// stable); the entry reads are racy and confirmed later by the freeze. Returns the slab's RefCount: more than the
    /// blocks listed means some slots sit in thread caches or are being published (a cache-held failure).
    /// </summary>
    public int ListLiveBlocksLocked(SlabClass cls, int head)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        Live.Clear();
        _handedOut.Clear();
        int refs = _slabs.ListHandedOutSlotsLocked(cls, head, _handedOut);
        HandleTable handles = _cx.Handles;
        foreach ((uint index, nint slot) in _handedOut)
        {
            if (!handles.Owns(index)) continue;   // not an entry of this heap: a reverse-map word not yet written
            HandleEntry* e = handles.Get(index);
            long state = Volatile.Read(ref e->State);
            // A frozen entry belongs to another migration (its address may be about to change): not listed, so the
            // slab's RefCount exceeds the list and the caller retries later.
            if ((state & (EntryState.Allocated | EntryState.Run | EntryState.Frozen | EntryState.Movable)) != (EntryState.Allocated | EntryState.Movable)
                || e->Address != slot) continue;
            Live.Add((index, state, slot));
        }
        return refs;
    }

    /// <summary>After a slab batch: the source slot of every moved block among items [<paramref name="first"/>,
    /// <paramref name="end"/>) and the destination slot of every block that stayed are free again. Caller holds the
    /// class lock.</summary>
    public void ReleaseBatchSlotsLocked(SlabClass cls, int first, int end)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        MigrationBatch batch = _cx.Batch;
        for (int i = first; i < end; i++)
            _slabs.FreeSlotLocked(cls, batch[i].Result == MigrateResult.Success ? batch[i].Src : batch[i].Dst);
    }
}
