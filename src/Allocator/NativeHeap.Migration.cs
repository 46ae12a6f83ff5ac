namespace Compaction.Allocator;

/// <summary>Outcome of one block migration (the kernel's MIGRATEPAGE_SUCCESS, -EAGAIN and permanent failures).</summary>
internal enum MigrateResult
{
    Success,
    /// <summary>The entry is no longer a live block (freed meanwhile); nothing to do.</summary>
    Gone,
    /// <summary>The block is unmovable: a permanent failure.</summary>
    NotMovable,
    /// <summary>Pinned (atomic pin or a pin slot seen after the freeze): transient, retry later.</summary>
    Pinned,
    /// <summary>Frozen by another migration or changed under us: transient, retry later.</summary>
    Busy,
    /// <summary>No destination could be allocated.</summary>
    NoMemory,
}

// The freeze / copy / repoint primitive (native-layout.md, "Migration protocol").
public sealed unsafe partial class NativeHeap
{
    /// <summary>
    /// Moves the live movable block whose entry is <paramref name="index"/> to a new place of the same kind: a slot
    /// in another slab of its class (the fullest), or a new page run. Takes class or zone locks only to allocate the
    /// destination and free the source, never while the block is frozen; the caller must hold no heap lock.
    /// </summary>
    internal MigrateResult MigrateEntry(uint index)
    {
        HandleEntry* e = Handles.Get(index);
        long s = Volatile.Read(ref e->State);
        // Cheap rejection, no lock (seed 000): a racy read; the freeze CAS below re-checks all of it.
        if ((s & EntryState.Allocated) == 0) return MigrateResult.Gone;
        if ((s & EntryState.Movable) == 0) return MigrateResult.NotMovable;
        if ((s & EntryState.PinMask) != 0) return MigrateResult.Pinned;
        if ((s & EntryState.Frozen) != 0) return MigrateResult.Busy;

        nint src = e->Address;
        long size = e->Size;
        bool run = (s & EntryState.Run) != 0;
        nint dst = AllocateDestination(index, src, size, run);
        if (dst == 0) return MigrateResult.NoMemory;

        MigrateResult result = FreezeCopyRepoint(e, index, s, src, dst, size, run);
        ReleaseStorage(result == MigrateResult.Success ? src : dst, size, run);
        return result;
    }

    /// <summary>
    /// Steps 3-8 of the migration protocol: freeze with a CAS that expects the exact state read before (allocated,
    /// same generation, no atomic pin, not frozen); a process-wide barrier; scan the pin slots; copy; repoint the
    /// reverse map and the entry; unfreeze with a release store. While frozen no other thread writes the state word
    /// (Free, atomic pins and slot pins all wait or back off), so the plain unfreeze loses no update.
    /// </summary>
    private MigrateResult FreezeCopyRepoint(HandleEntry* e, uint index, long s, nint src, nint dst, long size, bool run)
    {
        if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s) return MigrateResult.Busy;
        // ABA guard: another migration may have moved the block and restored the very same state word between our
        // read of the address and the freeze. Only a frozen entry's address changes, so it is stable from here.
        if (e->Address != src)
        {
            Volatile.Write(ref e->State, s);
            return MigrateResult.Busy;
        }
        Interlocked.MemoryBarrierProcessWide();
        if (PinRegistry.IsPinned(e))
        {
            Volatile.Write(ref e->State, s);
            return MigrateResult.Pinned;
        }
        Buffer.MemoryCopy((void*)src, (void*)dst, size, size);
        // A run's head already names the entry (InitRun); a slot's reverse-map word is written now.
        if (!run) *Slabs[(int)BlockKind.Movable].ReverseMapWord(dst, Classes.ClassOf(size)) = (int)index;
        e->Address = dst;
        Volatile.Write(ref e->State, s);
        Interlocked.Increment(ref _migrationsSucceeded);
        Interlocked.Add(ref _bytesMigrated, size);
        return MigrateResult.Success;
    }

    private nint AllocateDestination(uint index, nint src, long size, bool run)
    {
        if (run)
        {
            int pages = (int)((size + Map.PageSize - 1) >> Map.PageShift);
            int start = AllocatePageRun(pages, BlockKind.Movable, (st, count) => InitRun(st, count, index));
            return start < 0 ? 0 : Map.AddressOf(start);
        }
        int c = Classes.ClassOf(size);
        SlabAllocator slabs = Slabs[(int)BlockKind.Movable];
        SlabClass cls = slabs.Class[c];
        int srcHead = Map.HeadOf(Map.PageOf(src));
        Span<nint> one = stackalloc nint[1];
        lock (cls.Lock)
        {
            int head = slabs.FindSlabLocked(cls, excludeHead: srcHead);
            if (head >= 0 && slabs.TakeSlotsLocked(cls, head, one, 1) == 1) return one[0];
        }
        // No other slab has room: a fresh one (AllocateSlots prefers existing slabs, which are all full or the source).
        return slabs.AllocateSlots(c, one, 1) == 1 && Map.HeadOf(Map.PageOf(one[0])) != srcHead ? one[0] : ReturnSlot(one[0], c);
    }

    private nint ReturnSlot(nint slot, int c)
    {
        if (slot != 0) Slabs[(int)BlockKind.Movable].FreeSlots(c, [slot]);
        return 0;
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

    private long _migrationsSucceeded;
    private long _bytesMigrated;
}
