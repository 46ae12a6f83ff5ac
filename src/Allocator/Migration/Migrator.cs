using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Pins;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Migration;

/// <summary>
/// The migration primitive: freeze, copy, repoint and unfreeze blocks whose destinations the caller allocated
/// (native-layout.md, "Migration protocol"), and the movable owners it consults.
/// </summary>
/// <remarks>
/// Takes no lock except, in <see cref="MigrateEntry"/>, the class or zone lock that allocates or frees one
/// destination. Callers hold no class, zone or table lock while blocks are frozen. Counters are interlocked, since
/// tests and tools may migrate beside a compaction.
/// </remarks>
internal sealed unsafe partial class Migrator
{
    [ThreadStatic] private static MigrationBatch? t_batch;

    private readonly HandleTable _handles;
    private readonly PageAllocator _pages;
    private readonly SlabAllocator _slabs;     // the movable kind's: only movable blocks migrate
    private readonly SlabAllocator _unmovableSlabs;   // destinations of long-term pins (Demote)
    private long _blocksMigrated;
    private long _bytesMigrated;

    public Migrator(HandleTable handles, PageAllocator pages, SlabAllocator movableSlabs, SlabAllocator unmovableSlabs, OwnerRegistry owners)
    {
        _handles = handles;
        _pages = pages;
        _slabs = movableSlabs;
        _unmovableSlabs = unmovableSlabs;
        Owners = owners;
    }

    /// <summary>The movable owners of this heap's blocks.</summary>
    public OwnerRegistry Owners { get; }

    /// <summary>Blocks moved since the heap was created.</summary>
    public long BlocksMigrated => Volatile.Read(ref _blocksMigrated);
    /// <summary>Bytes copied by migrations since the heap was created.</summary>
    public long BytesMigrated => Volatile.Read(ref _bytesMigrated);

    /// <summary>
    /// Migrates every block of <paramref name="batch"/> from Src to Dst (each Dst already allocated by the caller,
    /// with room for the block). Per block: freeze with a CAS expecting exactly State; re-check the address; a
    /// process-wide barrier; pin-slot scan; copy; reverse map; repoint; unfreeze with a release store. Blocks without
    /// an owner go first, together, under one barrier. Blocks with an owner go one at a time afterwards (isolate,
    /// freeze, barrier, copy, migrate callback), each with a barrier of its own, so that while an owner callback runs
    /// no other block is frozen by this thread and the callback may use the heap. Blocks that fail are unfrozen in
    /// place and their owners get putback; an exception (say, out of managed memory) unfreezes every block still
    /// frozen before it leaves. The caller holds no heap lock and frees Src of successes and Dst of failures
    /// afterwards. Returns the number of blocks moved; <see cref="MigrationBatch.BytesMoved"/> their bytes.
    /// </summary>
    public int MigrateBatch(MigrationBatch batch)
    {
        int frozen = 0;
        bool owned = false;
        batch.BytesMoved = 0;
        batch.Barriers = 0;
        for (int i = 0; i < batch.Count; i++)
        {
            batch[i].Owner = null;
            if ((batch[i].State & EntryState.HasOwner) != 0) { owned = true; batch[i].Result = MigrateResult.Busy; continue; }
            if (TryFreeze(batch, i)) frozen++;
        }
        int moved = frozen > 0 ? FinishFrozen(batch, 0, batch.Count) : 0;
        if (owned)
        {
            for (int i = 0; i < batch.Count; i++)
            {
                if ((batch[i].State & EntryState.HasOwner) == 0) continue;
                if (!Owners.Isolate(batch, i) || !TryFreeze(batch, i)) continue;
                moved += FinishFrozen(batch, i, i + 1);
            }
        }
        return moved;
    }

    /// <summary>Steps 1 and 3-4 for one block: reject unusable expected states, freeze, check the address.
    /// Result is Success while the block is frozen by us.</summary>
    private bool TryFreeze(MigrationBatch batch, int i)
    {
        HandleEntry* e = _handles.Get(batch[i].Index);
        long s = batch[i].State;
        // A state word read while another migration held the block frozen must not be "frozen again": the CAS below
        // would succeed as a no-op and two migrations would own the block. Likewise an atomic pin: the freeze CAS
        // must expect a pin count of zero.
        if ((s & EntryState.PinMask) != 0) { FailUnfrozen(batch, i, MigrateResult.Pinned); return false; }
        if ((s & EntryState.Frozen) != 0 || (s & EntryState.Allocated) == 0) { FailUnfrozen(batch, i, MigrateResult.Busy); return false; }
        if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s) { FailUnfrozen(batch, i, MigrateResult.Busy); return false; }
        // ABA guard: another migration may have moved the block and restored the very same state word since the
        // caller read it. Only a frozen entry's address changes, so from here it is stable. An owned block must
        // also still have the owner that isolated it (a re-own or unregister meanwhile makes this attempt void).
        if (e->Address != batch[i].Src) { Unfreeze(batch, i, MigrateResult.Gone); FrozenWait.WakeSleepers(); return false; }
        // A run's page count was read without the freeze (from its head descriptor) to size the destination: now that
        // the run cannot be freed or moved, its descriptor is stable, and a destination of another length is void.
        if ((s & EntryState.Run) != 0 && RunPagesAt(batch[i].Src) != RunPagesAt(batch[i].Dst))
        {
            Unfreeze(batch, i, MigrateResult.Gone);
            FrozenWait.WakeSleepers();
            return false;
        }
        if (batch[i].Owner != null && !Owners.IsStillOwner(batch[i].Index, s, batch[i].Owner!))
        {
            Unfreeze(batch, i, MigrateResult.Busy);
            FrozenWait.WakeSleepers();
            return false;
        }
        batch[i].Result = MigrateResult.Success;
        return true;
    }

    /// <summary>Steps 5-8 for the frozen blocks among [<paramref name="first"/>, <paramref name="end"/>): one
    /// barrier, the pin-slot snapshot, then copy, owner callback, reverse map, repoint and unfreeze. A block is frozen
    /// exactly while its Result is Success and it has not been reached yet, which is what the handler undoes.</summary>
    private int FinishFrozen(MigrationBatch batch, int first, int end)
    {
        int moved = 0, i = first;
        try
        {
            // Dekker with the pinners: every pin slot stored before this point is visible after it, and every pin
            // that loads the state word after it sees Frozen. One barrier for every block frozen so far.
            batch.Barriers++;
            Interlocked.MemoryBarrierProcessWide();
            BeforePinSnapshot?.Invoke();
            PinRegistry.Snapshot(batch.PinnedEntries);
            bool anyPinned = batch.PinnedEntries.Count > 0;   // usually none: then no block pays a hash lookup
            for (; i < end; i++)
            {
                ref MigrationItem it = ref batch[i];
                if (it.Result != MigrateResult.Success) continue;
                HandleEntry* e = _handles.Get(it.Index);
                if (anyPinned && batch.PinnedEntries.Contains((long)e))
                {
                    Unfreeze(batch, i, MigrateResult.Pinned);
                    continue;
                }
                long size = _pages.Map.BlockSize(it.Src, it.State);   // frozen: the run's descriptor is stable
                Buffer.MemoryCopy((void*)it.Src, (void*)it.Dst, size, size);
                if (it.Owner != null && !OwnerRegistry.Migrate(batch, i, e, this)) continue;
                if ((it.State & EntryState.Run) == 0)
                    *_slabs.ReverseMapWord(it.Dst, _slabs.Classes.ClassOf(size)) = (int)it.Index;
                e->Address = it.Dst;
                // Unfrozen with the state the freeze expected; a long-term pin's move also makes the block unmovable,
                // and an unmovable block has no movable owner (the registration goes right after). The release store
                // orders the copy, the reverse map and the new address before it: a thread that sees the block
                // unfrozen (every reader loads the state word with acquire) sees its bytes at the new address.
                Volatile.Write(ref e->State, batch.Demote ? it.State & ~(EntryState.Movable | EntryState.HasOwner) : it.State);
                // A thread asleep on this block goes on now, not after the rest of the batch (a plain read of the
                // sleeper count: one that it misses is woken by the fenced call at the end of the batch).
                if (FrozenWait.AnySleepers) FrozenWait.WakeSleepers();
                if (batch.Demote && (it.State & EntryState.HasOwner) != 0) Owners.Forget(it.Index, it.State);
                moved++;
                batch.BytesMoved += size;
            }
        }
        catch
        {
            // Nothing may stay frozen: every block not yet reached keeps its old place.
            for (; i < end; i++)
                if (batch[i].Result == MigrateResult.Success) Unfreeze(batch, i, MigrateResult.Busy);
            throw;
        }
        finally
        {
            Interlocked.Add(ref _blocksMigrated, moved);
            FrozenWait.WakeSleepers();   // threads that met one of these blocks frozen: the batch is done
        }
        Interlocked.Add(ref _bytesMigrated, batch.BytesMoved);
        return moved;
    }

    /// <summary>A block we did not freeze: record why, and put it back to the owner that isolated it (if any).</summary>
    private static void FailUnfrozen(MigrationBatch batch, int i, MigrateResult why)
    {
        batch[i].Result = why;
        OwnerRegistry.Putback(batch, i);
    }

    /// <summary>Ends our freeze of block <paramref name="i"/> in place (release store of the state read in step 1).</summary>
    internal void Unfreeze(MigrationBatch batch, int i, MigrateResult why)
    {
        Volatile.Write(ref _handles.Get(batch[i].Index)->State, batch[i].State);
        batch[i].Result = why;
        OwnerRegistry.Putback(batch, i);
    }

    // ------------------------------------------------------------------ single blocks (tests and tools)

    /// <summary>
    /// Moves the live movable block of entry <paramref name="index"/> to a new place of the same kind: a slot in
    /// another slab of its class (the fullest), or a new page run. The caller must hold no heap lock.
    /// </summary>
    public MigrateResult MigrateEntry(uint index)
    {
        // Cheap rejection, no lock: a racy read; the freeze CAS re-checks all of it.
        MigrateResult why = Candidate(index, out long s, out nint src, out long size);
        if (why != MigrateResult.Success) return why;
        bool run = (s & EntryState.Run) != 0;
        nint dst = AllocateDestination(index, src, size, run);
        if (dst == 0) return MigrateResult.NoMemory;

        // A nested call (from an owner callback) must not reuse the batch its caller is iterating.
        MigrationBatch batch = t_batch is { InUse: false } b ? b : (t_batch = new MigrationBatch());
        MigrateResult result = MigrateResult.Busy;
        batch.InUse = true;
        try
        {
            batch.Clear();
            batch.Add(index, s, src, dst);
            MigrateBatch(batch);
            result = batch[0].Result;
        }
        finally
        {
            batch.InUse = false;
            ReleaseStorage(result == MigrateResult.Success ? src : dst, size, run);
        }
        return result;
    }

    /// <summary>
    /// The long-term pin's move (the kernel's FOLL_LONGTERM migration out of ZONE_MOVABLE): every live movable block of
    /// <paramref name="indices"/> moves into unmovable memory (a slot of an unmovable slab of its class, or an unmovable
    /// run: the normal zone's unmovable pageblocks) through the migration protocol, in one batch under one barrier,
    /// and leaves it unmovable (its Movable bit cleared as it is unfrozen). Per block the result is Success (moved),
    /// NotMovable (already unmovable: nothing to do), NoMemory (no unmovable room), or what a migration can meet
    /// (Pinned, Busy, Gone; the caller may retry). The caller holds no heap lock. Returns the blocks moved;
    /// <paramref name="bytesMoved"/> their bytes.
    /// </summary>
    public int Demote(ReadOnlySpan<uint> indices, Span<MigrateResult> results, out long bytesMoved)
    {
        bytesMoved = 0;
        MigrationBatch batch = t_batch is { InUse: false } b ? b : (t_batch = new MigrationBatch());
        batch.InUse = true;
        int moved = 0;
        Span<int> slotOf = indices.Length <= 256 ? stackalloc int[indices.Length] : new int[indices.Length];
        Span<long> sizes = indices.Length <= 256 ? stackalloc long[indices.Length] : new long[indices.Length];
        slotOf.Fill(-1);   // before anything can throw: the cleanup below reads every k
        bool migrated = false;
        try
        {
            batch.Clear();
            batch.Demote = true;
            for (int k = 0; k < indices.Length; k++)
            {
                results[k] = Candidate(indices[k], out long s, out nint src, out long size);
                if (results[k] != MigrateResult.Success) continue;
                sizes[k] = size;
                nint dst = AllocateDestination(indices[k], src, size, (s & EntryState.Run) != 0, BlockKind.Unmovable);
                if (dst == 0) { results[k] = MigrateResult.NoMemory; continue; }
                slotOf[k] = batch.Count;
                batch.Add(indices[k], s, src, dst);
            }
            migrated = true;   // from here every queued block has a result (MigrateBatch unfreezes what it does not finish)
            if (batch.Count > 0) moved = MigrateBatch(batch);
            bytesMoved = batch.BytesMoved;
        }
        finally
        {
            // Sources of the moved blocks and destinations of the others go back (the old storage was movable). If
            // the queueing threw, nothing was frozen: every destination taken so far goes back.
            for (int k = 0; k < indices.Length; k++)
            {
                int i = slotOf[k];
                if (i < 0) continue;
                MigrateResult r = migrated ? batch[i].Result : MigrateResult.Busy;
                results[k] = r;
                // The size the destination was allocated for; a moved run's source has the same length (TryFreeze).
                bool run = (batch[i].State & EntryState.Run) != 0;
                if (r == MigrateResult.Success) ReleaseStorage(batch[i].Src, sizes[k], run, BlockKind.Movable);
                else ReleaseStorage(batch[i].Dst, sizes[k], run, BlockKind.Unmovable);
            }
            batch.InUse = false;
        }
        return moved;
    }

    /// <summary>Reads a block's state for a move: Success with its state, address and size when it is live, movable,
    /// unpinned and not frozen (racy: the freeze CAS re-checks it all), otherwise why not.</summary>
    private MigrateResult Candidate(uint index, out long s, out nint src, out long size)
    {
        HandleEntry* e = _handles.Get(index);
        s = Volatile.Read(ref e->State);
        src = 0;
        size = 0;
        if ((s & EntryState.Allocated) == 0) return MigrateResult.Gone;
        if ((s & EntryState.Movable) == 0) return MigrateResult.NotMovable;
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;
        src = Volatile.Read(ref e->Address);
        // Seqlock-style: if the state word is unchanged, the address read in between belongs to the block the state
        // describes (a free and reuse of the entry would have changed it), not to a later tenant. A run's page count
        // comes from its head descriptor, read racily here and confirmed under the freeze (TryFreeze).
        size = (s & EntryState.Run) != 0 ? _pages.Map.RunSize(src, s) : EntryState.SlabSize(s);
        return Volatile.Read(ref e->State) == s ? MigrateResult.Success : MigrateResult.Busy;
    }

    private nint AllocateDestination(uint index, nint src, long size, bool run, BlockKind kind = BlockKind.Movable)
    {
        PageMap map = _pages.Map;
        if (run)
        {
            int start = _pages.AllocateRun(PagesFor(size), kind, index);
            return start < 0 ? 0 : map.AddressOf(start);
        }
        SlabAllocator slabs = kind == BlockKind.Movable ? _slabs : _unmovableSlabs;
        return slabs.AllocateSlotOutside(slabs.Classes.ClassOf(size), excludeHead: map.HeadOf(map.PageOf(src)));
    }

    private void ReleaseStorage(nint addr, long size, bool run, BlockKind kind = BlockKind.Movable)
    {
        if (run) _pages.FreePages(_pages.Map.PageOf(addr), PagesFor(size));
        else (kind == BlockKind.Movable ? _slabs : _unmovableSlabs).FreeSlots(_slabs.Classes.ClassOf(size), [addr]);
    }

    private int PagesFor(long size) => _pages.Map.PagesFor(size);

    private int RunPagesAt(nint address) => _pages.Map.Page(_pages.Map.PageOf(address)).RunPages;
}
