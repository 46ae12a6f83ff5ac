using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;

namespace Compaction.Allocator;

/// <summary>
/// Test hooks, all in one place: internal views of the layers and drivers that tests, benchmarks and tools use, as
/// extension members of <see cref="NativeHeap"/> over its internal views (so that <c>heap.Validate()</c> reads as
/// before, without a partial of the heap). Nothing in the product calls them.
/// </summary>
internal static unsafe class NativeHeapTestHooks
{
    extension(NativeHeap heap)
    {
        /// <summary>The normal zone.</summary>
        internal Zone? NormalZone => heap.Pages.Normal;

        /// <summary>The movable zone, null when the heap has none.</summary>
        internal Zone? Movable => heap.Pages.Movable;

        /// <summary>Bytes the arena holds committed now (a racy read of one counter; cheaper than a statistics snapshot).</summary>
        internal long CommittedBytesNow => heap.Memory.CommittedBytes;

        /// <summary>Committed bytes plus the metadata charged to the memory limit (what the limit bounds).</summary>
        internal long ChargedBytesNow => heap.Memory.ChargedBytes;

        /// <summary>True while a waste-driven run is under way (a racy read, for hand-driven steps).</summary>
        internal bool BackgroundWasteRunActive() => heap.Compactor?.WasteRunActive ?? false;

        /// <summary>True while every thread's cache is switched off.</summary>
        internal bool ThreadCachesDisabled => heap.Caches.Disabled;

        /// <summary>The whole-heap validator; the heap must be quiescent. Empty when consistent.</summary>
        /// <exception cref="InvalidOperationException">The background compactor runs: its steps change what the validator
        /// reads, and it would report problems that are none (stop it first).</exception>
        internal List<string> Validate()
        {
            if (heap.BackgroundCompactionRunning)
                throw new InvalidOperationException("The validator needs a quiescent heap: stop background compaction first.");
            return HeapValidator.Validate(heap.Pages, heap.Slabs, heap.Handles, heap.Caches);
        }

        /// <summary>Switches every thread's cache off and drains it; pair with <see cref="EnableThreadCaches"/>.</summary>
        internal void DisableThreadCaches() => heap.Caches.Disable();

        /// <summary>Switches the threads' caches back on.</summary>
        internal void EnableThreadCaches() => heap.Caches.Enable();

        /// <summary>Drains every thread's cache and the depot.</summary>
        internal void DrainThreadCaches() => heap.Caches.Drain();

        /// <summary>Slots parked in the threads' caches and the depot.</summary>
        internal long CachedSlots() => heap.Caches.CachedSlots();

        /// <summary>Migrates the block <paramref name="handle"/> names, if it is live and movable.</summary>
        internal MigrateResult Migrate(BlockHandle handle)
        {
            heap.Locate(handle);
            return heap.Migrator.MigrateEntry(HandleBits.Index(handle.Value));
        }

        /// <summary>
        /// Gives the live block <paramref name="handle"/> names the generation <paramref name="generation"/>, as if its
        /// entry had been freed and reused that many times, and returns the block's handle under it (the old handle
        /// becomes stale). Lets a test reach the end of an entry's generations without 2^32 frees. The block must have no
        /// movable owner (owners are keyed by generation), and nothing may use it meanwhile.
        /// </summary>
        internal BlockHandle AgeEntry(BlockHandle handle, uint generation)
        {
            HandleEntry* e = heap.Locate(handle);
            long s = Volatile.Read(ref e->State);
            HandleChecks.CheckLive(handle, s);
            if ((s & (EntryState.HasOwner | EntryState.Frozen | EntryState.PinMask)) != 0)
                throw new InvalidOperationException("AgeEntry needs an unowned, unpinned block that no migration holds.");
            long aged = (s & ~EntryState.WithGeneration(uint.MaxValue)) | EntryState.WithGeneration(generation);
            if (Interlocked.CompareExchange(ref e->State, aged, s) != s)
                throw new InvalidOperationException("The block changed while AgeEntry ran.");
            return new BlockHandle(HandleBits.Encode(EntryState.Generation(aged), HandleBits.Index(handle.Value)));
        }

        /// <summary>The block's current address (racy; stable only while the block is pinned).</summary>
        internal nint CurrentAddress(BlockHandle handle) => heap.Locate(handle)->Address;

        /// <summary>True when every pageblock of the arena is wholly free (after draining caches and releasing
        /// retained empty slabs).</summary>
        internal bool AllPageblocksFree()
        {
            heap.Caches.Drain();
            heap.Reclaimer.ReleaseEmptySlabs();
            foreach (Zone z in heap.Pages.Zones)
            {
                lock (z.Lock)
                {
                    // Above the frontier every pageblock is free (never handed out).
                    (int first, int end) = z.UsedPageblocks;
                    for (int pb = first; pb < end; pb++)
                        if (!z.IsPageblockFreeLocked(pb)) return false;
                }
            }
            return true;
        }
    }
}
