using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
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

    /// <summary>The live blocks <see cref="ListLiveBlocksLocked"/> found: entry, state word, slot.</summary>
    public readonly List<(uint index, long state, nint slot)> Live = [];

    public SlabMover(CompactionContext cx)
    {
        _cx = cx;
        _slabs = cx.Slabs;
    }

    /// <summary>
    /// Lists the live movable blocks of a slab into <see cref="Live"/>, in slot order: slots below Bump whose
    /// reverse-map word names an entry of this heap that is allocated, movable, not frozen and still at that slot.
    /// Caller holds the class lock (Bump and RefCount are stable); the entry reads are racy and confirmed later by the
    /// freeze. Returns the slab's RefCount: more than the blocks listed means some slots sit in thread caches or are
    /// being published (a cache-held failure).
    /// </summary>
    /// <remarks>
    /// The reverse map is read for every slot below Bump, free ones included, instead of first walking the free-slot
    /// list: that walk is a chain of dependent loads through the slots' memory (one cache miss after another, the
    /// largest cost of listing a sparse slab), while these entry loads are independent of each other. A free slot's
    /// word is stale and names an entry that is elsewhere now: a freed entry's address is its free-list link, a moved
    /// one's its new place, and a rebound one's another slot (this one is free, so nobody was given it), so the
    /// address check rejects it, as it rejects a word not yet written by a binding in flight. Those independent loads
    /// are made to overlap: the entry <see cref="PrefetchDistance"/> slots ahead is prefetched, so that a sparse slab's
    /// listing waits for about one miss per that many slots instead of one per slot.
    /// </remarks>
    public int ListLiveBlocksLocked(SlabClass cls, int head)
    {
        Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");
        Live.Clear();
        HandleTable handles = _cx.Handles;
        int c = cls.Index, size = _slabs.Classes.Size[c];
        ref PageDescriptor d = ref _cx.Map.Page(head);
        nint slab = _cx.Map.AddressOf(head);
        int* rmap = (int*)(slab + _slabs.Classes.ReverseMapOffset[c]);
        Live.EnsureCapacity(d.RefCount);
        int bump = d.Bump;
        for (int i = 0; i < Math.Min(PrefetchDistance, bump); i++) PrefetchEntry((uint)rmap[i]);
        for (int i = 0; i < bump; i++)
        {
            if (i + PrefetchDistance < bump) PrefetchEntry((uint)rmap[i + PrefetchDistance]);
            uint index = (uint)rmap[i];
            if (!handles.Owns(index)) continue;   // not an entry of this heap: a word never written, or garbage
            HandleEntry* e = handles.Get(index);
            long state = Volatile.Read(ref e->State);
            nint slot = slab + i * size;
            // A frozen entry belongs to another migration (its address may be about to change): not listed, so the
            // slab's RefCount exceeds the list and the caller retries later.
            if ((state & (EntryState.Allocated | EntryState.Run | EntryState.Frozen | EntryState.Movable)) != (EntryState.Allocated | EntryState.Movable)
                || e->Address != slot) continue;
            Live.Add((index, state, slot));
        }
        return d.RefCount;
    }

    /// <summary>Slots ahead of the one being listed whose handle entries are prefetched: enough cache misses in
    /// flight to cover a miss's latency with the work of the slots between (about 15 ns each when their entries are
    /// in the cache).</summary>
    private const int PrefetchDistance = 16;

    /// <summary>Asks the cache for the handle entry of <paramref name="index"/>, a reverse-map word read without a
    /// lock that may be stale or garbage: only an index inside the table's reserved range is used, and a prefetch
    /// never faults, so a word that names no committed entry costs nothing but the hint. A no-op where the CPU has no
    /// prefetch instruction .NET exposes (the listing's entry loads are independent of each other, so an out-of-order
    /// core overlaps some of them anyway).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchEntry(uint index)
    {
        if (Sse.IsSupported && index < HandleStore.MaxEntries) Sse.Prefetch0(HandleStore.Base + index);
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
