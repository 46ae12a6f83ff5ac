using System.Runtime.CompilerServices;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator;

// Pins: the slot pin (PinScope, a few plain loads and stores) and the atomic pin (BlockPin).
// The protocol and why it is safe: native-layout.md, "Pins".
public sealed unsafe partial class NativeHeap
{
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
        SpinWait spin = default;
        while (true)
        {
            // A Dispose freezes every entry while it decides; once it is done the heap is gone. The flag is read after
            // the state: Dispose sets it before it frees the entries, so a state it freed comes with the flag set.
            s = Volatile.Read(ref e->State);
            if (_disposed) ThrowHelper.Disposed();
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.Frozen) == 0) return PinCore(handle, e, pins);
            FrozenByThisThread.ThrowIfFrozenHere(e);
            spin.SpinOnce();
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
        SpinWait spin = default;
        // Throws before any record is taken. A frozen entry (a migration's copy, or a Dispose deciding) is waited for;
        // once a Dispose is done, the heap is gone (checked before the state, whose entry Dispose frees after the flag).
        try
        {
            while (!AtomicPins.TryAcquire(handle, e, _map, out s))
            {
                spin.SpinOnce();
                if (_disposed) ThrowHelper.Disposed();
            }
        }
        catch (InvalidBlockHandleException) when (_disposed)
        {
            // The entry was freed by a Dispose that completed meanwhile (it sets the flag before freeing entries).
            ThrowHelper.Disposed();
            throw;
        }
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
}
