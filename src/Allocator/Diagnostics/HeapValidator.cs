using Compaction.Allocator.Caches;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Diagnostics;

/// <summary>The whole-heap validator, run by tests and stress tests with the heap quiescent.</summary>
internal static unsafe class HeapValidator
{
    /// <summary>
    /// The expensive whole-heap check (mimalloc's third assertion level): free lists against descriptors, the kind of
    /// every page below the zones' frontiers, every slab's counts, every live handle against its page or slot and
    /// reverse map, live totals against the entries. Must run while no other thread uses the heap. Returns the
    /// problems found (empty when consistent).
    /// </summary>
    public static List<string> Validate(PageAllocator pages, SlabAllocator[] slabs, HandleTable handles, ThreadCaches caches)
    {
        PageMap map = pages.Map;
        SizeClasses classes = slabs[0].Classes;
        var problems = new List<string>();
        foreach (Zone z in pages.Zones)
        {
            lock (z.Lock) { if (z.ValidateLocked() is string p) problems.Add(p); }
        }
        foreach (SlabAllocator s in slabs)
            if (s.Validate() is string p) problems.Add(p);

        // Walk the pages below each zone's frontier: every page is in exactly one free block, run or slab. Above the
        // frontier the zone was never handed out (free max-order blocks, descriptors still zero): not walked, so the
        // check costs what the heap uses, not what it reserves.
        long freePages = 0;
        var runHeads = new List<int>();          // every run's head page; each must be named by a live or cached entry
        var namedRuns = new HashSet<int>();
        foreach (Zone z in pages.Zones)
        {
            int frontier = z.Frontier;
            freePages += z.End - frontier;
            for (int page = z.Start; page < frontier;)
            {
                ref PageDescriptor d = ref map.Page(page);
                switch (d.Kind)
                {
                    case PageKind.FreeHead:
                        freePages += 1 << d.Order;
                        for (int t = page + 1; t < page + (1 << d.Order); t++)
                            if (map.Page(t).Kind != PageKind.FreeTail) { problems.Add($"page {t} inside free block {page} is {map.Page(t).Kind}"); break; }
                        page += 1 << d.Order;
                        break;
                    case PageKind.RunHead:
                    case PageKind.SlabHead:
                        int count = d.Kind == PageKind.RunHead ? d.RunPages : classes.PagesPerSlab[d.SlabClass];
                        if (page + count > frontier) problems.Add($"the run or slab at {page} reaches past the {z.Kind} zone's frontier {frontier}");
                        for (int t = page + 1; t < page + count; t++)
                            if (map.Page(t).Kind != PageKind.Tail || map.Page(t).TailHead != page) { problems.Add($"page {t} of the run or slab at {page} is not its tail"); break; }
                        if (d.Kind == PageKind.RunHead) runHeads.Add(page);
                        if (d.Kind == PageKind.SlabHead && z == pages.Movable && d.SlabKind != BlockKind.Movable)
                            problems.Add($"unmovable slab at page {page} in the movable zone");
                        page += count;
                        break;
                    default:
                        problems.Add($"page {page} is a stray {d.Kind}");
                        page++;
                        break;
                }
            }
        }
        long zoneFree = (pages.Normal?.FreePages ?? 0) + (pages.Movable?.FreePages ?? 0);
        if (freePages != zoneFree) problems.Add($"pages in free blocks {freePages} != zones' free pages {zoneFree}");

        // Every live handle names its storage, and its storage names it back.
        long liveBytes = 0, liveBlocks = 0;
        var slotsPerSlab = new Dictionary<int, int>();
        foreach (uint i in handles.Indices())
        {
            HandleEntry* e = handles.Get(i);
            long s = e->State;
            if ((s & EntryState.Allocated) == 0) continue;
            liveBlocks++;
            if ((s & EntryState.Frozen) != 0) problems.Add($"entry {i} is still frozen");
            if (e->Address < map.Base || e->Address >= map.AddressOf(map.PageCount - 1) + map.PageSize) { problems.Add($"entry {i} points outside the arena"); continue; }
            int page = map.PageOf(e->Address);
            bool movable = (s & EntryState.Movable) != 0;
            if (!movable && pages.Movable != null && pages.Movable.Contains(page)) problems.Add($"unmovable entry {i} lives in the movable zone");
            if ((s & EntryState.Run) != 0)
            {
                ref PageDescriptor d = ref map.Page(page);
                if (d.Kind != PageKind.RunHead || d.RunHandle != i) { problems.Add($"entry {i}: its run head does not name it back"); continue; }
                liveBytes += map.RunSize(e->Address, s);
                namedRuns.Add(page);
            }
            else
            {
                long size = EntryState.SlabSize(s);
                liveBytes += size;
                int head = map.HeadOf(page);
                ref PageDescriptor d = ref map.Page(head);
                int c = classes.ClassOf(size);
                if (d.Kind != PageKind.SlabHead || d.SlabClass != c || d.SlabKind != (movable ? BlockKind.Movable : BlockKind.Unmovable))
                    problems.Add($"entry {i}: not in a slab of its class and kind");
                else if (*slabs[movable ? 0 : 1].ReverseMapWord(e->Address, c) != (int)i)
                    problems.Add($"entry {i}: reverse map names {*slabs[movable ? 0 : 1].ReverseMapWord(e->Address, c)}");
                slotsPerSlab[head] = slotsPerSlab.GetValueOrDefault(head) + 1;
            }
        }
        (long bytes, long blocks) = caches.LiveTotals();
        if (bytes != liveBytes || blocks != liveBlocks) problems.Add($"live counters say {bytes} B in {blocks} blocks; entries hold {liveBytes} B in {liveBlocks}");

        // Every bound free entry in a cache or the depot is free, unretired, this heap's, and bound both ways: its
        // slot's reverse-map word (or its run head) names it. A slab's RefCount is its live blocks plus such slots.
        var cached = new Dictionary<int, int>();
        var bound = new List<(int bin, ulong item)>();
        caches.CollectCached(bound);
        CacheBins layout = caches.Layout;
        foreach ((int bin, ulong item) in bound)
        {
            uint index = HandleBits.Index(item);
            if (!handles.Owns(index)) { problems.Add($"cache bin {bin} holds entry {index} of another heap"); continue; }
            HandleEntry* e = handles.Get(index);
            if ((e->State & (EntryState.Allocated | EntryState.Retired)) != 0) { problems.Add($"cache bin {bin} holds entry {index}, which is live or retired"); continue; }
            if (EntryState.Generation(e->State) != HandleBits.Generation(item)) { problems.Add($"cache bin {bin} holds entry {index} with a generation it no longer has"); continue; }
            int page = map.PageOf(e->Address);
            if (layout.IsRun(bin))
            {
                ref PageDescriptor d = ref map.Page(page);
                if (d.Kind != PageKind.RunHead || d.RunHandle != index || d.RunPages != layout.PagesOf(bin))
                    problems.Add($"cached run entry {index}: its run head does not name it back with {layout.PagesOf(bin)} pages");
                else namedRuns.Add(page);
                continue;
            }
            int head = map.HeadOf(page);
            ref PageDescriptor h = ref map.Page(head);
            int c = layout.ClassOf(bin);
            if (h.Kind != PageKind.SlabHead || h.SlabClass != c || h.SlabKind != layout.KindOf(bin)) { problems.Add($"cached entry {index}: not in a slab of its bin"); continue; }
            if (*slabs[(int)layout.KindOf(bin)].ReverseMapWord(e->Address, c) != (int)index) problems.Add($"cached entry {index}: its slot's reverse map names another entry");
            cached[head] = cached.GetValueOrDefault(head) + 1;
        }
        // A run no live or cached entry names is storage nobody can free again: lost pages.
        foreach (int page in runHeads)
            if (!namedRuns.Contains(page)) problems.Add($"the run at page {page} ({map.Page(page).RunPages} pages) is named by no live or cached entry: its pages are lost");
        foreach (Zone z in pages.Zones)
            for (int page = z.Start, frontier = z.Frontier; page < frontier; page++)
            {
                ref PageDescriptor d = ref map.Page(page);
                if (d.Kind != PageKind.SlabHead) continue;
                int expected = slotsPerSlab.GetValueOrDefault(page) + cached.GetValueOrDefault(page);
                if (d.RefCount != expected) problems.Add($"slab {page}: RefCount {d.RefCount} but {expected} slots are live or cached");
            }
        if (pages.Poison.Enabled) CheckPoison(pages, classes, caches.Layout, bound, problems);
        return problems;
    }

    /// <summary>
    /// Poisoning on (native-layout.md, "Poisoned free memory"): every byte of free storage still holds what its free
    /// left there, so a write through a stale pointer shows up as a "use after free" problem. Free pages below the
    /// frontiers hold the pattern or, page by page, zero (given back to the OS, or never used); a free-listed slot
    /// holds the pattern after its link; a slot or run a cache or the depot keeps holds it throughout; a slot never
    /// carved lies on pages that were free when the slab was carved, so each page's part of it holds the pattern or
    /// zero. Live blocks, the reverse maps and a slab's unused tail are not checked. The heap must be quiescent.
    /// </summary>
    private static void CheckPoison(PageAllocator pages, SizeClasses classes, CacheBins layout, List<(int bin, ulong item)> bound, List<string> problems)
    {
        PageMap map = pages.Map;
        var cachedSlots = new HashSet<nint>();
        foreach ((int bin, ulong item) in bound)
        {
            nint address = HandleStore.Get(HandleBits.Index(item))->Address;
            if (!layout.IsRun(bin)) { cachedSlots.Add(address); continue; }
            Report(FreePoison.Changed(address, (long)layout.PagesOf(bin) << map.PageShift), $"a cached run of {layout.PagesOf(bin)} pages", problems);
        }
        foreach (Zone z in pages.Zones)
        {
            for (int page = z.Start, frontier = z.Frontier; page < frontier;)
            {
                ref PageDescriptor d = ref map.Page(page);
                switch (d.Kind)
                {
                    case PageKind.FreeHead:
                        CheckFreeBlockPoison(pages, page, 1 << d.Order, problems);
                        page += 1 << d.Order;
                        break;
                    case PageKind.RunHead:
                        page += Math.Max(1, d.RunPages);
                        break;
                    case PageKind.SlabHead:
                        CheckSlabPoison(map, pages.Poison, classes, page, ref d, cachedSlots, problems);
                        page += classes.PagesPerSlab[d.SlabClass];
                        break;
                    default:
                        page++;   // a stray page: the walk above reported it
                        break;
                }
            }
        }
    }

    /// <summary>A free block's pages, pageblock by pageblock: a pageblock never committed was never written through any
    /// pointer the heap handed out, and is skipped (unreadable on Linux; on the portable back end it holds what the C
    /// allocation held until its first commit zeroes it).</summary>
    private static void CheckFreeBlockPoison(PageAllocator pages, int start, int count, List<string> problems)
    {
        PageMap map = pages.Map;
        for (int p = start, end = start + count; p < end;)
        {
            int pb = p >> map.PageblockOrder;
            int next = Math.Min(end, (pb + 1) << map.PageblockOrder);
            if (pages.Memory.IsReadable(pb))
                Report(pages.Poison.ChangedPoisonOrZero(map.AddressOf(p), (long)(next - p) << map.PageShift), $"the free block at page {start}", problems);
            p = next;
        }
    }

    /// <summary>One slab's free slots: free-listed ones after their link, cached ones whole, uncarved ones per page.</summary>
    private static void CheckSlabPoison(PageMap map, FreePoison poison, SizeClasses classes, int head, ref PageDescriptor d, HashSet<nint> cachedSlots, List<string> problems)
    {
        int c = d.SlabClass, size = classes.Size[c], capacity = classes.SlotsPerSlab[c];
        nint slab = map.AddressOf(head);
        var freeListed = new bool[capacity];
        for (int f = d.SlabFreeSlot, n = 0; f >= 0 && f < capacity && n < capacity; f = *(int*)(slab + f * size), n++) freeListed[f] = true;
        for (int slot = 0; slot < capacity; slot++)
        {
            nint at = slab + slot * size;
            if (slot >= d.Bump) Report(poison.ChangedPoisonOrZero(at, size), $"an uncarved slot of the slab at page {head}", problems);
            else if (freeListed[slot]) Report(FreePoison.Changed(at + FreePoison.SlotLinkBytes, size - FreePoison.SlotLinkBytes), $"a free slot of the slab at page {head}", problems);
            else if (cachedSlots.Contains(at)) Report(FreePoison.Changed(at, size), $"a cached slot of the slab at page {head}", problems);
        }
    }

    private static void Report((nint first, long changed) found, string where, List<string> problems)
    {
        if (found.changed != 0) problems.Add(FreePoison.Problem(found, where));
    }
}
