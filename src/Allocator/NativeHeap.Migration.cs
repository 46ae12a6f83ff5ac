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
    public int Count;
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
        }
        Index[Count] = index;
        State[Count] = state;
        Src[Count] = src;
        Dst[Count] = dst;
        Result[Count] = MigrateResult.Busy;
        Count++;
    }
}

// The freeze / copy / repoint primitive (native-layout.md, "Migration protocol").
public sealed unsafe partial class NativeHeap
{
    [ThreadStatic] private static HandleEntry* t_migratingEntry;

    /// <summary>
    /// Migrates every block of <paramref name="batch"/> from Src to Dst (each Dst already allocated by the caller,
    /// with room for the block). Per block: owner isolate; freeze with a CAS expecting exactly State; re-check the
    /// address; then one process-wide barrier for the batch; pin-slot scan; copy; owner migrate callback; reverse map;
    /// repoint; unfreeze with a release store. Blocks that fail are unfrozen and keep their place; their owners get
    /// putback. The caller holds no heap lock (owner callbacks run here) and frees Src of successes and Dst of
    /// failures afterwards. Returns the number of blocks moved.
    /// </summary>
    internal int MigrateBatch(MigrationBatch batch, CompactionCounters? counters = null)
    {
        int frozen = 0;
        for (int i = 0; i < batch.Count; i++)
        {
            HandleEntry* e = Handles.Get(batch.Index[i]);
            long s = batch.State[i];
            // A state word read while another migration held the block frozen must not be "frozen again": the CAS
            // below would succeed as a no-op and two migrations would own the block.
            // Likewise an atomic pin: the freeze CAS must expect a pin count of zero.
            if ((s & EntryState.PinMask) != 0) { batch.Result[i] = MigrateResult.Pinned; continue; }
            if ((s & EntryState.Frozen) != 0 || (s & EntryState.Allocated) == 0) { batch.Result[i] = MigrateResult.Busy; continue; }
            if ((s & EntryState.HasOwner) != 0 && !OwnerIsolate(batch.Index[i], s, out batch.Result[i])) continue;
            if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s)
            {
                batch.Result[i] = MigrateResult.Busy;
                OwnerPutback(batch.Index[i], s);
                continue;
            }
            // ABA guard: another migration may have moved the block and restored the very same state word since the
            // caller read it. Only a frozen entry's address changes, so from here it is stable.
            if (e->Address != batch.Src[i])
            {
                Unfreeze(batch, i, MigrateResult.Gone);
                continue;
            }
            batch.Result[i] = MigrateResult.Success;
            frozen++;
        }
        if (frozen == 0)
        {
            if (counters != null)
                for (int i = 0; i < batch.Count; i++) counters.CountOutcome(batch.Result[i]);
            return 0;
        }

        // Dekker with the pinners: every pin slot stored before this point is visible after it, and every pin that
        // loads the state word after it sees Frozen.
        Interlocked.MemoryBarrierProcessWide();
        PinRegistry.Snapshot(batch.PinnedEntries);

        int moved = 0;
        for (int i = 0; i < batch.Count; i++)
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
            if ((batch.State[i] & EntryState.HasOwner) != 0 && !OwnerMigrate(batch.Index[i], batch, i)) continue;
            if ((batch.State[i] & EntryState.Run) == 0)
                *Slabs[(int)BlockKind.Movable].ReverseMapWord(batch.Dst[i], Classes.ClassOf(size)) = (int)batch.Index[i];
            e->Address = batch.Dst[i];
            Volatile.Write(ref e->State, batch.State[i]);
            moved++;
            Interlocked.Increment(ref _migrationsSucceeded);
            Interlocked.Add(ref _bytesMigrated, size);
            if (counters != null) counters.BytesMoved += size;
        }
        if (counters != null)
            for (int i = 0; i < batch.Count; i++) counters.CountOutcome(batch.Result[i]);
        return moved;
    }

    private void Unfreeze(MigrationBatch batch, int i, MigrateResult why)
    {
        Volatile.Write(ref Handles.Get(batch.Index[i])->State, batch.State[i]);
        batch.Result[i] = why;
        OwnerPutback(batch.Index[i], batch.State[i]);
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

        MigrationBatch batch = t_batch ??= new MigrationBatch();
        batch.Clear();
        batch.Add(index, s, src, dst);
        MigrateBatch(batch);
        MigrateResult result = batch.Result[0];
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
