using Compaction.Allocator.Pins;

namespace Compaction.Allocator.Caches;

/// <summary>
/// A thread's cache for one heap: per bin (kind and slab class, or kind and run page count), a stack of free handle
/// entries already bound to storage — each entry's <c>Address</c> is its slot or run, and the slot's reverse-map word
/// (or the run head's descriptor) names the entry — so an allocation pops one entry and publishes it, and a free
/// pushes it back (native-layout.md, "Per-thread caches"). Like the kernel's per-CPU lists, storage in here counts as
/// used in its slab or zone and so makes slab consolidation and run migration fail; <see cref="ThreadCaches.Disable"/>
/// switches every cache off and drains it.
/// </summary>
/// <remarks>
/// Ownership: only the owning thread pushes or pops, and only between setting <see cref="InUse"/> to 1 and back to 0
/// after reading the heap's disable counter. A drainer raises that counter, issues a process-wide barrier, waits for
/// InUse to be 0 and only then drains. A dead thread's cache can be drained at any time.
/// The stacks live in one managed array indexed without bounds checks (offsets and capacities are fixed at creation).
/// </remarks>
internal sealed class ThreadCache
{
    /// <summary>1 while the owner touches the cache; the Dekker flag of the drain protocol.</summary>
    public int InUse;
    /// <summary>How deep the owner is in call sections of the heap (<see cref="ThreadCaches.EnterCall"/>): above 0
    /// while a slow path runs. Written by the owner only; Dispose waits for it to be 0 (the closing protocol).</summary>
    public int InCall;
    /// <summary>Bytes and blocks allocated minus freed by this thread; written by the owner only, summed racily.</summary>
    public long LiveBytes;
    public long LiveBlocks;
    /// <summary>Bytes of runs held in <see cref="Bins"/> (owner only; kept at most <see cref="ThreadCaches.ThreadRunBytes"/>
    /// by PopRun and PushRun).</summary>
    public long RunBytes;
    public readonly Thread Owner;
    /// <summary>The heap's cache set this cache belongs to.</summary>
    public readonly ThreadCaches Set;
    /// <summary>The owner thread's pin records, so a free's pinned-by-this-thread check needs no thread-local read.</summary>
    public readonly ThreadPins Pins;
    public readonly CacheBin[] Bins;
    /// <summary>Every bin's stack: the handle each bound free entry will be issued with (generation and index).</summary>
    public readonly ulong[] Items;

    public ThreadCache(ThreadCaches set, CacheBins layout)
    {
        Set = set;
        Owner = Thread.CurrentThread;
        Pins = PinRegistry.Current;
        (Bins, Items) = CacheBins.Allocate(layout.ThreadCapacity);
    }
}
