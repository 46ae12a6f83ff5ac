using System.Runtime.CompilerServices;
using Compaction.Allocator.Engine;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator;

// Handles, pins and owners at the public boundary: handle validation and the queries on a handle (native-layout.md,
// "Handle table and handles"), the slot pin (PinScope, a few plain loads and stores), the atomic pin (BlockPin),
// long-term pins (the loop lives in Engine/LongTermPinner.cs; native-layout.md, "Long-term pins") and owner
// registration (the registry and its callbacks live in the migration layer). Why the pins are safe:
// native-layout.md, "Pins".
public sealed unsafe partial class NativeHeap
{
    /// <summary>True when <paramref name="handle"/> names a live block of this heap (never throws, except when disposed).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public bool IsLive(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        HandleEntry* e = TryLocate(handle);
        return e != null && HandleChecks.IsLive(handle, Volatile.Read(ref e->State));
    }

    /// <summary>Checks that the handle's index lies in a chunk of this heap and returns its entry (not yet its
    /// generation): the caller's generation check decides whether it is live.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* Locate(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        HandleEntry* e = TryLocate(handle);
        if (e == null) LocateFailedOrDisposed(handle);
        return e;
    }

    /// <summary>A handle this heap does not own: the heap was disposed meanwhile (its chunks went back to the store,
    /// so a handle that passed the disposed check finds a foreign owner), or a bad handle.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void LocateFailedOrDisposed(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        HandleChecks.ThrowNotLocated(handle);
    }

    /// <summary><see cref="Locate"/> for a caller that has just checked the heap is not disposed (a context).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* LocateLive(BlockHandle handle)
    {
        HandleEntry* e = TryLocate(handle);
        if (e == null) LocateFailedOrDisposed(handle);
        return e;
    }

    /// <summary>The entry of the handle's index when its chunk belongs to this heap, else null
    /// (<see cref="HandleChecks.TryLocate"/>: a range compare, a load of the chunk's owner word, an add).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private HandleEntry* TryLocate(BlockHandle handle) => HandleChecks.TryLocate(handle, _id);


    /// <summary>
    /// Pins a block for the length of a scope and exposes its bytes. While the scope lives the block does not move
    /// and cannot be freed by this thread. Use with <c>using</c>:
    /// <code>using (var pin = heap.Pin(h)) pin.Span.Fill(1);</code>
    /// </summary>
    /// <remarks>Lock-free, no interlocked instruction: the pin is published in a per-thread slot (a thread holding
    /// more than 8 scopes at once gets more slots on its first overflow). Pinning an unmovable block works too.
    /// Cost: about 10 ns for the pin and its release (4-5 ns through a <see cref="HeapContext"/>); a block the migrator
    /// is moving at that instant is waited for (spinning until that one block's copy ends: microseconds for small
    /// blocks, up to the copy of a large one).</remarks>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PinScope Pin(BlockHandle handle) => PinCore(handle, Locate(handle), PinRegistry.Current);

    /// <summary>The slot pin with the entry located and the thread's pin records in hand (inlined into the heap's
    /// <see cref="Pin(BlockHandle)"/> and <see cref="HeapContext.Pin(BlockHandle)"/>): take a free slot, publish the entry in it, load the
    /// state word (native-layout.md, "Fast paths").</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal PinScope PinCore(BlockHandle handle, HandleEntry* e, ThreadPins pins)
    {
        nint* slot = PinRegistry.FreeSlot(pins);
        // Dekker with the migrator: store our slot, then load the state. The migrator stores Frozen, issues a
        // process-wide barrier, then loads the slots. One of us sees the other (native-layout.md, "Pins").
        long sequence = PinRegistry.Publish(slot, e);
        long s = Volatile.Read(ref e->State);
        const long slowBits = EntryState.GenerationMask | EntryState.Allocated | EntryState.Frozen | EntryState.Run;
        if (((s ^ HandleChecks.Expected(handle)) & slowBits) != 0)   // not live with this generation, frozen, or a run
            return PinSlow(handle, e, pins, slot, sequence, s);
        return new PinScope(this, slot, sequence, (byte*)e->Address, EntryState.SlabSize(s));
    }

    /// <summary>A run (pinned: its page count is read now that it cannot move), or a block frozen by a migration
    /// (unpin, wait for the copy and retry), or one not live (unpin and throw).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private PinScope PinSlow(BlockHandle handle, HandleEntry* e, ThreadPins pins, nint* slot, long sequence, long s)
    {
        if ((s & EntryState.Frozen) == 0 && HandleChecks.IsLive(handle, s))
        {
            nint address = e->Address;
            return new PinScope(this, slot, sequence, (byte*)address, _map.RunSize(address, s));
        }
        Volatile.Write(ref *slot, 0);
        FrozenWait wait = default;
        while (true)
        {
            // A Dispose freezes every entry while it decides; once it is done the heap is gone. The flag is read after
            // the state: Dispose sets it before it frees the entries, so a state it freed comes with the flag set.
            s = Volatile.Read(ref e->State);
            if (_disposed) ThrowHelper.Disposed();
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.Frozen) == 0) return PinCore(handle, e, pins);
            FrozenByThisThread.ThrowIfFrozenHere(e);
            wait.Once(e);
        }
    }

    /// <summary>
    /// Pins a block until the returned pin is disposed, from any thread: unlike a <see cref="PinScope"/> it may be
    /// stored in a field, held across <c>await</c> and released on another thread. The compactor sees it through the
    /// page's pin count before taking any lock.
    /// </summary>
    /// <remarks>Cost: acquire plus release is eight interlocked operations (the entry's pin count, the page's, the
    /// pooled record and its generation, each way): 32-36 ns in quiet runs on the project's machines, against 5-10 ns
    /// for a <see cref="PinScope"/> (about 10 ns); no managed allocation. A block holds at most 1,023 atomic pins at once (this
    /// method's, long-term pins and the Interop adapters' together); one more throws
    /// <see cref="InvalidOperationException"/>.</remarks>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="InvalidOperationException">The block already holds 1,023 atomic pins.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockPin AcquirePin(BlockHandle handle) => AcquireBlockPin(handle, longTerm: false);

    private BlockPin AcquireBlockPin(BlockHandle handle, bool longTerm)
    {
        HandleEntry* e = Locate(handle);
        long s;
        FrozenWait wait = default;
        // Throws before any record is taken. A frozen entry (a migration's copy, or a Dispose deciding) is waited for;
        // once a Dispose is done, the heap is gone (checked before the state, whose entry Dispose frees after the flag).
        try
        {
            while (!AtomicPins.TryAcquire(handle, e, _map, out s))
            {
                wait.Once(e);
                if (_disposed) ThrowHelper.Disposed();
            }
        }
        catch (InvalidBlockHandleException) when (_disposed)
        {
            // The entry was freed by a Dispose that completed meanwhile (it sets the flag before freeing entries).
            ThrowHelper.Disposed();
            throw;
        }
        return NewBlockPin(handle, e, s, longTerm);
    }

    /// <summary>The <see cref="BlockPin"/> of an atomic pin just taken on <paramref name="e"/> (state word
    /// <paramref name="s"/>): a pooled record filled and activated; no managed allocation once the pool has grown.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private BlockPin NewBlockPin(BlockHandle handle, HandleEntry* e, long s, bool longTerm)
    {
        BlockPinRecord r = BlockPinRecord.Rent();
        r.Heap = this;
        r.Entry = e;
        r.LongTerm = longTerm;
        r.HandleValue = handle.Value;
        r.Address = e->Address;                  // pinned: the address and size are stable
        r.Length = _map.BlockSize(e->Address, s);
        return new BlockPin(r, r.Activate());
    }

    /// <summary>Drops one atomic pin of a <see cref="BlockPin"/>.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (a heap with pins held refuses Dispose, so
    /// only a finalized-and-resurrected misuse gets here).</exception>
    internal void ReleaseAtomicPin(HandleEntry* e)
    {
        if (_disposed) ThrowHelper.Disposed();
        AtomicPins.Release(e, _map);
    }

    /// <summary>How long a long-term pin waits for a block that a short or atomic pin holds in place before it gives
    /// up (<see cref="InvalidOperationException"/>). A block a migration holds frozen is waited for without a limit:
    /// a migration always ends (a copy's time), however long a loaded machine takes to schedule it.</summary>
    public static readonly TimeSpan LongTermPinPatience = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// Pins a block for an unbounded time, for memory handed to the OS or to native code (a socket's or a file's
    /// buffer, a C library's state). A movable block is first migrated into unmovable memory (the normal zone's
    /// unmovable pageblocks, through the migration protocol, so a concurrent pin or compaction is handled as usual)
    /// and stays there, <b>unmovable for the rest of its life</b>: <see cref="GetKind"/> reports
    /// <see cref="BlockKind.Unmovable"/> and <see cref="GetStablePointer"/> works, before and after the pin is
    /// released. So a long-term pin never holds a pageblock of the movable zone in place, and the compactor never
    /// meets one. An unmovable block is pinned where it is. Release with <see cref="BlockPin.Dispose"/>, from any thread.
    /// </summary>
    /// <remarks>Cost: an unmovable block costs what <see cref="AcquirePin"/> does; a movable one is first copied into
    /// unmovable memory and pays a migration batch's process-wide barrier (tens of microseconds on these 2-core VMs;
    /// a batch through <see cref="PinLongTerm(ReadOnlySpan{BlockHandle}, Span{BlockPin})"/> pays one for all). A block
    /// held in place by another pin is waited for, up to <see cref="LongTermPinPatience"/>.</remarks>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="OutOfMemoryException">No unmovable memory is left for the block (the normal zone is full);
    /// nothing changed.</exception>
    /// <exception cref="InvalidOperationException">The block stayed pinned in place (a <see cref="PinScope"/> or a
    /// <see cref="BlockPin"/>) for <see cref="LongTermPinPatience"/>: release short pins before pinning long-term; or
    /// its movable owner refused the move (Isolate false, Migrate TryAgain, or an exception) for as long; or it
    /// already holds the maximum of atomic pins.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockPin PinLongTerm(BlockHandle handle)
    {
        Span<BlockPin> pin = [default];
        PinLongTerm([handle], pin);
        return pin[0];
    }

    /// <summary>
    /// Long-term pins every block of <paramref name="handles"/> into <paramref name="pins"/> (same index), as
    /// <see cref="PinLongTerm(BlockHandle)"/> does for one, in one pass over the batch: each handle is checked and the
    /// movable ones are queued as it goes, then all of them migrate into unmovable memory together (one migration
    /// batch, one barrier), and each block is pinned as its move ends; no second scan checks the result. All or
    /// nothing: when one block cannot be pinned, the pins this call took are released and the exception thrown
    /// (blocks already moved stay unmovable). Whatever <paramref name="pins"/> held before is overwritten, not released.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="pins"/> is shorter than <paramref name="handles"/>.</exception>
    /// <exception cref="InvalidBlockHandleException">A handle is null, foreign, forged or stale (checked for all before any
    /// block is touched; a block freed by another thread during the call is reported the same way).</exception>
    /// <exception cref="OutOfMemoryException">No unmovable memory is left for one of the blocks.</exception>
    /// <exception cref="InvalidOperationException">A block stayed held in place (see <see cref="PinLongTerm(BlockHandle)"/>).</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void PinLongTerm(ReadOnlySpan<BlockHandle> handles, Span<BlockPin> pins)
    {
        if (pins.Length < handles.Length) throw new ArgumentException($"{pins.Length} pins for {handles.Length} handles.", nameof(pins));
        int n = handles.Length;
        // Every handle is checked before anything changes.
        for (int k = 0; k < n; k++) pins[k] = default;
        for (int k = 0; k < n; k++) Locate(handles[k]);
        Span<long> states = n <= 128 ? stackalloc long[n] : new long[n];
        using (new CallSection(_caches)) _longTerm.PinAll(handles, states);   // the moves into unmovable memory touch the arena
        // Every block holds its long-term atomic pin now: each gets the record that releases it. All or nothing here
        // too: should a record not be had (the pool could not grow), every pin of the call is dropped.
        int wrapped = 0;
        try
        {
            for (; wrapped < n; wrapped++)
                pins[wrapped] = NewBlockPin(handles[wrapped], HandleStore.Get(HandleBits.Index(handles[wrapped].Value)), states[wrapped], longTerm: true);
        }
        catch
        {
            for (int k = 0; k < n; k++)
            {
                if (k < wrapped) pins[k].Dispose();
                else _longTerm.Unpin(HandleStore.Get(HandleBits.Index(handles[k].Value)));
                pins[k] = default;
            }
            throw;
        }
    }

    /// <summary>Drops a long-term pin's atomic pin and its count (a <see cref="BlockPin"/>'s release).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    internal void ReleaseLongTermPin(HandleEntry* e)
    {
        if (_disposed)
        {
            Interlocked.Decrement(ref _longTermCounts.Held);   // the record's generation CAS made this the pin's one release
            ThrowHelper.Disposed();
        }
        _longTerm.Unpin(e);
    }


    /// <summary>
    /// Registers <paramref name="owner"/> for a movable block: the compactor will ask it before moving the block and
    /// tell it the new address. Pass null to unregister. The registration ends when the block is freed; an owner is
    /// only ever called with the handle of the block it was registered for.
    /// </summary>
    /// <exception cref="InvalidOperationException">The block is unmovable, or this thread is migrating it (a call from
    /// its own owner's callback).</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void SetMovableOwner(BlockHandle handle, IMovableBlockOwner? owner)
    {
        HandleEntry* e = Locate(handle);
        using CallSection _ = new(_caches);
        _migrator.Owners.Set(handle, HandleBits.Index(handle.Value), e, owner);
    }

    // ------------------------------------------------------------------ queries on a handle

    /// <summary>The size requested for the block.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long GetSize(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        if ((s & EntryState.Run) == 0) return EntryState.SlabSize(s);
        // A run's page count is in its head descriptor, which is only stable while the run cannot move: read it
        // under a slot pin (or directly when this thread's owner callback holds the run frozen).
        if ((s & EntryState.Frozen) != 0 && FrozenByThisThread.Holds(e)) return _map.RunSize(e->Address, s);
        using PinScope pin = PinCore(handle, e, PinRegistry.Current);
        return pin.Length;
    }

    /// <summary>The kind the block was allocated as.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockKind GetKind(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        return (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
    }

    /// <summary>The address of an unmovable block; it never changes until the block is freed.</summary>
    /// <exception cref="InvalidOperationException">The block is movable: pin it instead.</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public nint GetStablePointer(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        if ((s & EntryState.Movable) != 0) ThrowHelper.NotUnmovable(handle);
        return e->Address;
    }
}
