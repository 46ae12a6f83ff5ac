using Compaction.Allocator.Pages;

namespace Compaction.Allocator.Slabs;

/// <summary>
/// The bytes live blocks occupy: each slab block at its class's slot size, each run at its whole pages. It is what a
/// perfectly compacted heap would hold, so resident memory over it is the waste compaction can remove, where
/// resident over the requested bytes also counts size-class rounding and page rounding, which no compaction removes
/// (a heap of 17 B blocks holds 32 B slots: 1.9x requested, however compact). The waste trigger and the soft limit
/// measure against it (native-layout.md, section 9, "Waste-driven runs").
/// </summary>
/// <remarks>
/// Lock-free: the class counters (<see cref="SlabClass.Slabs"/>, <see cref="SlabClass.UsedSlots"/>) and the zones'
/// free pages are written under their locks and read here racily; a 64-bit load is never torn on the 64-bit platforms
/// the heap runs on, and the value is a heuristic's input (a wake's trigger, the soft limit's level), off by what one
/// concurrent allocation or free changes. Slots bound in thread caches count as occupied: they are allocated as far
/// as the slabs know, and a drain gives them back.
/// </remarks>
internal sealed class LiveFootprint(PageAllocator pages, SlabAllocator[] slabs)
{
    /// <summary>Slot bytes of the used slots of every slab class of every kind, plus the pages of every run (pages in
    /// use less the slabs' pages), in bytes.</summary>
    public long Bytes()
    {
        long slotBytes = 0, slabPages = 0;
        foreach (SlabAllocator s in slabs)
        {
            SizeClasses sizes = s.Classes;
            for (int c = 0; c < sizes.Count; c++)
            {
                SlabClass cls = s.Class[c];
                slotBytes += Volatile.Read(ref cls.UsedSlots) * sizes.Size[c];
                slabPages += Volatile.Read(ref cls.Slabs) * sizes.PagesPerSlab[c];
            }
        }
        long usedPages = 0;
        foreach (Zone z in pages.Zones) usedPages += z.PageCount - z.FreePages;
        long runPages = Math.Max(0, usedPages - slabPages);
        return slotBytes + (runPages << pages.Map.PageShift);
    }
}
