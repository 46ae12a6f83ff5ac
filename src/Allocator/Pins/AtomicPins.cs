using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;

namespace Compaction.Allocator.Pins;

/// <summary>
/// Atomic pins (<c>BlockPin</c> and the Interop adapters: pins that cross threads or <c>await</c>): a count in the
/// entry's state word, mirrored in the page descriptor's <see cref="PageDescriptor.PinCount"/> of the block's first
/// page, which is what the compactor's lock-free check reads (native-layout.md, "Pins").
/// </summary>
internal static unsafe class AtomicPins
{
    /// <summary>
    /// Raises the entry's atomic pin count (CAS), then the pin count of the block's first page. Lock-free. False,
    /// with nothing changed, while the entry is frozen (a migration's copy, or a Dispose deciding): the caller waits
    /// and tries again. The page count is a hint: it may briefly over-count and never matters for safety (the freeze
    /// CAS on the entry, which expects zero pins, decides).
    /// </summary>
    /// <exception cref="InvalidBlockHandleException">The handle is stale.</exception>
    /// <exception cref="InvalidOperationException">The block already holds the maximum of atomic pins, or the calling
    /// thread's owner callback holds it frozen.</exception>
    /// <param name="handle">The block's handle, checked against the state word.</param>
    /// <param name="e">Its entry.</param>
    /// <param name="map">The heap's page map (the block's first page gets the pin count).</param>
    /// <param name="state">The state word the pin was taken on (without the pin).</param>
    public static bool TryAcquire(BlockHandle handle, HandleEntry* e, PageMap map, out long state)
    {
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.Frozen) != 0)
            {
                FrozenByThisThread.ThrowIfFrozenHere(e);
                state = 0;
                return false;
            }
            if ((s & EntryState.PinMask) == EntryState.PinMask)
                throw new InvalidOperationException($"{handle} already holds the maximum of {EntryState.PinMask} atomic pins.");
            if (Interlocked.CompareExchange(ref e->State, s + 1, s) == s)
            {
                // The entry's pin excludes a migration now, so its address is stable until the count falls.
                Interlocked.Increment(ref map.Page(map.PageOf(e->Address)).PinCount);
                state = s;
                return true;
            }
        }
    }

    /// <summary>Drops one atomic pin. Lock-free. The address is stable until the entry's count falls, so the page is
    /// found first.</summary>
    /// <exception cref="InvalidOperationException">No atomic pin is held (an unbalanced unpin); nothing changes.</exception>
    public static void Release(HandleEntry* e, PageMap map)
    {
        ref int pageCount = ref map.Page(map.PageOf(e->Address)).PinCount;
        Interlocked.Decrement(ref pageCount);
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            if ((s & EntryState.PinMask) == 0)
            {
                Interlocked.Increment(ref pageCount);
                ThrowHelper.PinReleased();
            }
            if (Interlocked.CompareExchange(ref e->State, s - 1, s) == s) return;
        }
    }
}
