using System.Runtime.CompilerServices;

namespace Compaction.Allocator;

/// <summary>Outcome of one block migration (the kernel's MIGRATEPAGE_SUCCESS, -EAGAIN and permanent failures).</summary>
internal enum MigrateResult
{
    Success,
    /// <summary>The entry is no longer a live block at that place (freed or moved meanwhile); nothing to do.</summary>
    Gone,
    /// <summary>The block is unmovable: a permanent failure.</summary>
    NotMovable,
    /// <summary>Pinned (atomic pin or a pin slot seen after the freeze): transient, retry later.</summary>
    Pinned,
    /// <summary>Frozen by another migration, changed under us, or its owner refused to isolate it: transient.</summary>
    Busy,
    /// <summary>Its owner answered "try again": transient.</summary>
    OwnerRetry,
    /// <summary>Its owner threw or refused for good: permanent for this run; the block stays intact.</summary>
    OwnerFailed,
    /// <summary>No destination could be allocated.</summary>
    NoMemory,
    /// <summary>A per-thread cache holds a slot of the slab (seed 001): transient.</summary>
    CacheHeld,
}

/// <summary>
/// Blocks to migrate together: one process-wide barrier serves the whole batch (native-layout.md, "Migration
/// protocol"). Filled by the caller with entry, expected state word, source and destination; the primitive fills
/// <see cref="Result"/>. Reused across batches; not thread-safe.
/// </summary>
internal sealed class MigrationBatch
{
    public uint[] Index = new uint[64];
    public long[] State = new long[64];
    public nint[] Src = new nint[64];
    public nint[] Dst = new nint[64];
    public MigrateResult[] Result = new MigrateResult[64];
    public IMovableBlockOwner?[] Owner = new IMovableBlockOwner?[64];   // the owner that isolated the block, if any
    public int Count;
    public bool InUse;                                                    // a nested MigrateEntry takes a fresh batch
    internal readonly HashSet<long> PinnedEntries = [];

    public void Clear() => Count = 0;

    public void Add(uint index, long state, nint src, nint dst)
    {
        if (Count == Index.Length)
        {
            int n = Count * 2;
            Array.Resize(ref Index, n);
            Array.Resize(ref State, n);
            Array.Resize(ref Src, n);
            Array.Resize(ref Dst, n);
            Array.Resize(ref Result, n);
            Array.Resize(ref Owner, n);
        }
        Index[Count] = index;
        State[Count] = state;
        Src[Count] = src;
        Dst[Count] = dst;
        Result[Count] = MigrateResult.Busy;
        Owner[Count] = null;
        Count++;
    }
}

// The freeze / copy / repoint primitive (native-layout.md, "Migration protocol").
public sealed unsafe partial class NativeHeap
{
    [ThreadStatic] private static HandleEntry* t_migratingEntry;

    /// <summary>
    /// Migrates every block of <paramref name="batch"/> from Src to Dst (each Dst already allocated by the caller,
    /// with room for the block). Per block: freeze with a CAS expecting exactly State; re-check the address; a
    /// process-wide barrier; pin-slot scan; copy; reverse map; repoint; unfreeze with a release store. Blocks without
    /// an owner go first, together, under one barrier. Blocks with an owner go one at a time afterwards (isolate,
    /// freeze, barrier, copy, migrate callback), so that while an owner callback runs no other block is frozen by
    /// this thread and the callback may use the heap. Blocks that fail are unfrozen in place and their owners get
    /// putback. The caller holds no heap lock and frees Src of successes and Dst of failures afterwards. Returns the
    /// number of blocks moved.
    /// </summary>
    internal int MigrateBatch(MigrationBatch batch, CompactionCounters? counters = null)
    {
        int frozen = 0;
        bool owned = false;
        for (int i = 0; i < batch.Count; i++)
        {
            batch.Owner[i] = null;
            if ((batch.State[i] & EntryState.HasOwner) != 0) { owned = true; batch.Result[i] = MigrateResult.Busy; continue; }
            if (TryFreeze(batch, i)) frozen++;
        }
        int moved = frozen > 0 ? FinishFrozen(batch, counters) : 0;
        if (owned)
        {
            for (int i = 0; i < batch.Count; i++)
            {
                if ((batch.State[i] & EntryState.HasOwner) == 0) continue;
                if (!OwnerIsolate(batch, i) || !TryFreeze(batch, i)) continue;
                moved += FinishFrozen(batch, counters, only: i);
            }
        }
        if (counters != null)
            for (int i = 0; i < batch.Count; i++) counters.CountOutcome(batch.Result[i]);
        return moved;
    }

    /// <summary>Steps 1 and 3-4 for one block: reject unusable expected states, freeze, check the address.
    /// Result is Success while the block is frozen by us.</summary>
    private bool TryFreeze(MigrationBatch batch, int i)
    {
        HandleEntry* e = Handles.Get(batch.Index[i]);
        long s = batch.State[i];
        // A state word read while another migration held the block frozen must not be "frozen again": the CAS below
        // would succeed as a no-op and two migrations would own the block. Likewise an atomic pin: the freeze CAS
        // must expect a pin count of zero.
        if ((s & EntryState.PinMask) != 0) { FailUnfrozen(batch, i, MigrateResult.Pinned); return false; }
        if ((s & EntryState.Frozen) != 0 || (s & EntryState.Allocated) == 0) { FailUnfrozen(batch, i, MigrateResult.Busy); return false; }
        if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s) { FailUnfrozen(batch, i, MigrateResult.Busy); return false; }
        // ABA guard: another migration may have moved the block and restored the very same state word since the
        // caller read it. Only a frozen entry's address changes, so from here it is stable. An owned block must
        // also still have the owner that isolated it (a re-own or unregister meanwhile makes this attempt void).
        if (e->Address != batch.Src[i]) { Unfreeze(batch, i, MigrateResult.Gone); return false; }
        if (batch.Owner[i] != null && (!_owners.TryGetValue(batch.Index[i], out IMovableBlockOwner? now) || now != batch.Owner[i]))
        {
            Unfreeze(batch, i, MigrateResult.Busy);
            return false;
        }
        batch.Result[i] = MigrateResult.Success;
        return true;
    }

    /// <summary>Steps 5-8 for the frozen blocks of the batch (or only block <paramref name="only"/>): one barrier, the
    /// pin-slot snapshot, then copy, owner callback, reverse map, repoint and unfreeze.</summary>
    private int FinishFrozen(MigrationBatch batch, CompactionCounters? counters, int only = -1)
    {
        // Dekker with the pinners: every pin slot stored before this point is visible after it, and every pin that
        // loads the state word after it sees Frozen.
        Interlocked.MemoryBarrierProcessWide();
        PinRegistry.Snapshot(batch.PinnedEntries);
        int moved = 0;
        int first = only >= 0 ? only : 0, end = only >= 0 ? only + 1 : batch.Count;
        for (int i = first; i < end; i++)
        {
            if (batch.Result[i] != MigrateResult.Success) continue;
            HandleEntry* e = Handles.Get(batch.Index[i]);
            if (batch.PinnedEntries.Contains((long)e))
            {
                Unfreeze(batch, i, MigrateResult.Pinned);
                continue;
            }
            long size = e->Size;
            Buffer.MemoryCopy((void*)batch.Src[i], (void*)batch.Dst[i], size, size);
            if (batch.Owner[i] != null && !OwnerMigrate(batch, i)) continue;
            if ((batch.State[i] & EntryState.Run) == 0)
                *Slabs[(int)BlockKind.Movable].ReverseMapWord(batch.Dst[i], Classes.ClassOf(size)) = (int)batch.Index[i];
            e->Address = batch.Dst[i];
            Volatile.Write(ref e->State, batch.State[i]);
            moved++;
            Interlocked.Increment(ref _migrationsSucceeded);
            Interlocked.Add(ref _bytesMigrated, size);
            if (counters != null) counters.BytesMoved += size;
        }
        return moved;
    }

    /// <summary>A block we did not freeze: record why, and put it back to the owner that isolated it (if any).</summary>
    private void FailUnfrozen(MigrationBatch batch, int i, MigrateResult why)
    {
        batch.Result[i] = why;
        OwnerPutback(batch, i);
    }

    private void Unfreeze(MigrationBatch batch, int i, MigrateResult why)
    {
        Volatile.Write(ref Handles.Get(batch.Index[i])->State, batch.State[i]);
        batch.Result[i] = why;
        OwnerPutback(batch, i);
    }

    // ------------------------------------------------------------------ single blocks (tests and tools)

    /// <summary>
    /// Moves the live movable block of entry <paramref name="index"/> to a new place of the same kind: a slot in
    /// another slab of its class (the fullest), or a new page run. The caller must hold no heap lock.
    /// </summary>
    internal MigrateResult MigrateEntry(uint index)
    {
        HandleEntry* e = Handles.Get(index);
        long s = Volatile.Read(ref e->State);
        // Cheap rejection, no lock (seed 000): a racy read; the freeze CAS re-checks all of it.
        if ((s & EntryState.Allocated) == 0) return MigrateResult.Gone;
        if ((s & EntryState.Movable) == 0) return MigrateResult.NotMovable;
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;

        nint src = Volatile.Read(ref e->Address);
        long size = Volatile.Read(ref e->Size);
        // Seqlock-style: if the state word is unchanged, the address and size read in between belong to the block
        // the state describes (a free and reuse of the entry would have changed it), not to a later tenant.
        if (Volatile.Read(ref e->State) != s) return MigrateResult.Busy;
        bool run = (s & EntryState.Run) != 0;
        nint dst = AllocateDestination(index, src, size, run);
        if (dst == 0) return MigrateResult.NoMemory;

        // A nested call (from an owner callback) must not reuse the batch its caller is iterating.
        MigrationBatch batch = t_batch is { InUse: false } b ? b : (t_batch = new MigrationBatch());
        MigrateResult result;
        batch.InUse = true;
        try
        {
            batch.Clear();
            batch.Add(index, s, src, dst);
            MigrateBatch(batch);
            result = batch.Result[0];
        }
        finally
        {
            batch.InUse = false;
        }
        ReleaseStorage(result == MigrateResult.Success ? src : dst, size, run);
        return result;
    }

    [ThreadStatic] private static MigrationBatch? t_batch;

    private nint AllocateDestination(uint index, nint src, long size, bool run)
    {
        if (run)
        {
            int pages = (int)((size + Map.PageSize - 1) >> Map.PageShift);
            int start = AllocatePageRun(pages, BlockKind.Movable, PageRunInit.Run(index));
            return start < 0 ? 0 : Map.AddressOf(start);
        }
        return Slabs[(int)BlockKind.Movable].AllocateSlotOutside(Classes.ClassOf(size), excludeHead: Map.HeadOf(Map.PageOf(src)));
    }

    private void ReleaseStorage(nint addr, long size, bool run)
    {
        if (run) FreePageRun(Map.PageOf(addr), (int)((size + Map.PageSize - 1) >> Map.PageShift));
        else Slabs[(int)BlockKind.Movable].FreeSlots(Classes.ClassOf(size), [addr]);
    }

    /// <summary>For tests and tools: migrates the block <paramref name="handle"/> names, if it is live and movable.</summary>
    internal MigrateResult Migrate(BlockHandle handle)
    {
        Locate(handle);
        return MigrateEntry(HandleBits.Index(handle.Value));
    }

    /// <summary>For tests: the block's current address (racy; stable only while the block is pinned).</summary>
    internal nint CurrentAddress(BlockHandle handle) => Locate(handle)->Address;

    /// <summary>Throws when the calling thread is inside an owner callback for this very entry: waiting for the
    /// entry to unfreeze would wait for ourselves.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowIfMigratingOnThisThread(HandleEntry* e)
    {
        if (t_migratingEntry == e)
            throw new InvalidOperationException("A movable-owner callback may not pin, free or re-own the block being migrated.");
    }

    private long _migrationsSucceeded;
    private long _bytesMigrated;
}
