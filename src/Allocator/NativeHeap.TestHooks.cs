using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator;

// Test hooks, all in one place: internal views of the layers and drivers that tests, benchmarks and tools use.
// Nothing in the product calls them.
public sealed unsafe partial class NativeHeap
{
    internal PageMap Map => _map;
    internal Zone? NormalZone => _pages.Normal;
    internal Zone? Movable => _pages.Movable;
    internal SizeClasses Classes => _classes;
    internal SlabAllocator[] Slabs => _slabs;
    internal HandleTable Handles => _handles;
    internal ArenaMemory Memory => _memory;
    internal Compactor? Compactor => _compactor;

    /// <summary>Bytes the arena holds committed now (a racy read of one counter; cheaper than a statistics snapshot).</summary>
    internal long CommittedBytesNow => _memory.CommittedBytes;
    internal long ChargedBytesNow => _memory.ChargedBytes;

    /// <summary>The whole-heap validator; the heap must be quiescent. Empty when consistent.</summary>
    /// <exception cref="InvalidOperationException">The background compactor runs: its steps change what the validator
    /// reads, and it would report problems that are none (stop it first).</exception>
    internal List<string> Validate()
    {
        if (BackgroundCompactionRunning)
            throw new InvalidOperationException("The validator needs a quiescent heap: stop background compaction first.");
        return HeapValidator.Validate(_pages, _slabs, _handles, _caches);
    }

    /// <summary>Switches every thread's cache off and drains it; pair with <see cref="EnableThreadCaches"/>.</summary>
    internal void DisableThreadCaches() => _caches.Disable();
    internal void EnableThreadCaches() => _caches.Enable();
    internal void DrainThreadCaches() => _caches.Drain();
    internal bool ThreadCachesDisabled => _caches.Disabled;
    internal long CachedSlots() => _caches.CachedSlots();

    /// <summary>Migrates the block <paramref name="handle"/> names, if it is live and movable.</summary>
    internal MigrateResult Migrate(BlockHandle handle)
    {
        Locate(handle);
        return _migrator.MigrateEntry(HandleBits.Index(handle.Value));
    }


    /// <summary>
    /// Gives the live block <paramref name="handle"/> names the generation <paramref name="generation"/>, as if its
    /// entry had been freed and reused that many times, and returns the block's handle under it (the old handle
    /// becomes stale). Lets a test reach the end of an entry's generations without 2^32 frees. The block must have no
    /// movable owner (owners are keyed by generation), and nothing may use it meanwhile.
    /// </summary>
    internal BlockHandle AgeEntry(BlockHandle handle, uint generation)
    {
        HandleEntry* e = Locate(handle);
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
    internal nint CurrentAddress(BlockHandle handle) => Locate(handle)->Address;

    /// <summary>True when every pageblock of the arena is wholly free (after draining caches and releasing
    /// retained empty slabs).</summary>
    internal bool AllPageblocksFree()
    {
        _caches.Drain();
        _reclaimer.ReleaseEmptySlabs();
        foreach (Zone z in _pages.Zones)
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
