using System.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Pins;

/// <summary>
/// The pins of one heap counted over its whole handle table: Dispose's count with new pins held off (freeze, barrier,
/// count; native-layout.md, "Dispose and the closing protocol"), its undo, and the plain count the metrics and the
/// memory limit's failure reason read. Walks of every entry of the heap: never on a hot path.
/// </summary>
internal static unsafe class PinCensus
{
    /// <summary>
    /// Dispose's pin count, with new pins held off: every live entry is frozen (as a migration freezes the entries it
    /// moves: an atomic pin waits while its entry is frozen, a slot pin that sees the freeze retries), then a
    /// process-wide barrier, then the slot pins are counted — Dekker's argument of the pin protocol, so a pin either is
    /// counted here or sees the freeze (native-layout.md, "Pins"). Returns the pins found (atomic ones from the state
    /// words, slot pins from the registry). Caller: Dispose, after <c>ThreadCaches.BeginClose</c>, so no call section
    /// (no migration, no free) touches a state word meanwhile; only atomic pin releases do, and they keep the frozen
    /// bit.
    /// </summary>
    public static long FreezeForDispose(HandleTable handles)
    {
        long atomic = 0;
        foreach (uint i in handles.Indices())
        {
            HandleEntry* e = handles.Get(i);
            while (true)
            {
                long s = Volatile.Read(ref e->State);
                if ((s & EntryState.Allocated) == 0) break;
                Debug.Assert((s & EntryState.Frozen) == 0, "no migration runs once the heap is closing");
                if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s) continue;
                atomic += s & EntryState.PinMask;
                break;
            }
        }
        Interlocked.MemoryBarrierProcessWide();
        return atomic + PinRegistry.CountPins(handles.Owns);
    }

    /// <summary>Undoes <see cref="FreezeForDispose"/> for a refused Dispose: clears the frozen bit of every live entry
    /// (a CAS loop, since an atomic pin's release may change the word meanwhile); the pins that waited go on.</summary>
    public static void ThawAfterRefusedDispose(HandleTable handles)
    {
        foreach (uint i in handles.Indices())
        {
            HandleEntry* e = handles.Get(i);
            while (true)
            {
                long s = Volatile.Read(ref e->State);
                if ((s & EntryState.Frozen) == 0) break;
                if (Interlocked.CompareExchange(ref e->State, s & ~EntryState.Frozen, s) == s) break;
            }
        }
        FrozenWait.WakeSleepers();
    }

    /// <summary>Slot pins (PinScope) on the heap's entries, and atomic pins (BlockPin, long-term pins, the Interop
    /// adapters). Lock-free and racy (each state word and slot read once with acquire): a count for a decision made
    /// with new pins held off (the finalizer's), for the metrics and for a failure's message.</summary>
    public static (int slot, int atomic) CountByKind(HandleTable handles)
    {
        int slot = PinRegistry.CountPins(handles.Owns);   // slot pins on entries of this heap's chunks only
        int atomic = 0;
        foreach (uint i in handles.Indices())
        {
            long s = Volatile.Read(ref handles.Get(i)->State);
            if ((s & EntryState.Allocated) != 0) atomic += (int)(s & EntryState.PinMask);
        }
        return (slot, atomic);
    }
}
