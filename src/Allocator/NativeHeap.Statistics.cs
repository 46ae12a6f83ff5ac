namespace Compaction.Allocator;

// Statistics snapshot and the whole-heap validator.
public sealed unsafe partial class NativeHeap
{
    /// <summary>A snapshot of memory use, free lists per order and migrate type, and slab occupancy.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapStatistics GetStatistics()
    {
        if (_disposed) ThrowHelper.Disposed();
        var zones = new List<ZoneStatistics>();
        foreach (Zone? z in (ReadOnlySpan<Zone?>)[NormalZone, MovableZone])
        {
            if (z == null) continue;
            int orders = z.MaxOrder + 1;
            var free = new long[orders * 2];
            var pageblocks = new int[2];
            long freePages;
            lock (z.Lock)
            {
                for (int o = 0; o < orders; o++)
                    for (int t = 0; t < 2; t++) free[o * 2 + t] = z.FreeBlocks(o, (MigrateType)t);
                freePages = z.FreePages;
            }
            for (int pb = z.Start >> Map.PageblockOrder; pb < z.End >> Map.PageblockOrder; pb++) pageblocks[(int)Map.GetMigrateType(pb)]++;
            zones.Add(new ZoneStatistics(z.Kind.ToString(), z.PageCount, freePages, orders, free, pageblocks));
        }
        var classes = new List<SlabClassStatistics>();
        foreach (SlabAllocator slabs in Slabs)
            foreach (SlabClass cls in slabs.Class)
            {
                long n, used;
                lock (cls.Lock) { n = cls.Slabs; used = cls.UsedSlots; }
                if (n == 0) continue;
                int c = cls.Index;
                classes.Add(new SlabClassStatistics(slabs.Kind, Classes.Size[c], Classes.PagesPerSlab[c], Classes.SlotsPerSlab[c], n, used));
            }
        (long liveBytes, long liveBlocks) = LiveTotals();
        return new HeapStatistics
        {
            LiveBytes = liveBytes,
            LiveBlocks = liveBlocks,
            CommittedBytes = _memory.CommittedBytes,
            ReservedBytes = _memory.ReservedBytes,
            DecommittedBytes = _memory.DecommittedBytes,
            PurgedBytes = _memory.PurgedBytes,
            MetadataBytes = Map.MetadataBytes + Handles.MetadataBytes,
            PageSize = Map.PageSize,
            PageblockPages = Map.PageblockPages,
            BlocksMigrated = Volatile.Read(ref _migrationsSucceeded),
            BytesMigrated = Volatile.Read(ref _bytesMigrated),
            CachedSlots = CachedSlots(),
            Compaction = Compactor?.Counters.Snapshot() ?? new CompactionStatistics(),
            FragmentationScore = Compactor?.Score() ?? 0,
            Zones = zones,
            SlabClasses = classes,
        };
    }

    /// <summary>
    /// The expensive whole-heap check (mimalloc's third assertion level): free lists against descriptors, every page's
    /// kind, every slab's counts, every live handle against its page or slot and reverse map, live totals against the
    /// entries. Must run while no other thread uses the heap. Returns the problems found (empty when consistent).
    /// </summary>
    internal List<string> Validate()
    {
        var problems = new List<string>();
        foreach (Zone? z in (ReadOnlySpan<Zone?>)[NormalZone, MovableZone])
        {
            if (z == null) continue;
            lock (z.Lock) { if (z.ValidateLocked() is string p) problems.Add(p); }
        }
        foreach (SlabAllocator s in Slabs)
            if (s.Validate() is string p) problems.Add(p);

        // Walk the pages: every page is in exactly one free block, run or slab.
        long freePages = 0;
        for (int page = 0; page < Map.PageCount;)
        {
            ref PageDescriptor d = ref Map.Page(page);
            switch (d.Kind)
            {
                case PageKind.FreeHead:
                    freePages += 1 << d.Order;
                    for (int t = page + 1; t < page + (1 << d.Order); t++)
                        if (Map.Page(t).Kind != PageKind.FreeTail) { problems.Add($"page {t} inside free block {page} is {Map.Page(t).Kind}"); break; }
                    page += 1 << d.Order;
                    break;
                case PageKind.RunHead:
                case PageKind.SlabHead:
                    int count = d.Kind == PageKind.RunHead ? d.Aux2 : Classes.PagesPerSlab[d.SizeClass & 0x7FFF];
                    for (int t = page + 1; t < page + count; t++)
                        if (Map.Page(t).Kind != PageKind.Tail || Map.Page(t).Aux != page) { problems.Add($"page {t} of the run or slab at {page} is not its tail"); break; }
                    if (d.Kind == PageKind.SlabHead && ZoneOf(page) == MovableZone && (d.SizeClass >> 15) != (int)BlockKind.Movable)
                        problems.Add($"unmovable slab at page {page} in the movable zone");
                    page += count;
                    break;
                default:
                    problems.Add($"page {page} is a stray {d.Kind}");
                    page++;
                    break;
            }
        }
        long zoneFree = (NormalZone?.FreePages ?? 0) + (MovableZone?.FreePages ?? 0);
        if (freePages != zoneFree) problems.Add($"pages in free blocks {freePages} != zones' free pages {zoneFree}");

        // Every live handle names its storage, and its storage names it back.
        long liveBytes = 0, liveBlocks = 0;
        var slotsPerSlab = new Dictionary<int, int>();
        for (uint i = 1; i < Handles.Count; i++)
        {
            HandleEntry* e = Handles.Get(i);
            long s = e->State;
            if ((s & EntryState.Allocated) == 0) continue;
            liveBlocks++;
            liveBytes += e->Size;
            if ((s & EntryState.Frozen) != 0) problems.Add($"entry {i} is still frozen");
            if (e->Address < Map.Base || e->Address >= Map.AddressOf(Map.PageCount - 1) + Map.PageSize) { problems.Add($"entry {i} points outside the arena"); continue; }
            int page = Map.PageOf(e->Address);
            bool movable = (s & EntryState.Movable) != 0;
            if (!movable && MovableZone != null && MovableZone.Contains(page)) problems.Add($"unmovable entry {i} lives in the movable zone");
            if ((s & EntryState.Run) != 0)
            {
                ref PageDescriptor d = ref Map.Page(page);
                if (d.Kind != PageKind.RunHead || d.Aux != (int)i || (long)d.Aux2 << Map.PageShift < e->Size)
                    problems.Add($"entry {i}: its run head does not name it back");
            }
            else
            {
                int head = Map.HeadOf(page);
                ref PageDescriptor d = ref Map.Page(head);
                int c = Classes.ClassOf(e->Size);
                if (d.Kind != PageKind.SlabHead || (d.SizeClass & 0x7FFF) != c || (d.SizeClass >> 15) != (movable ? 0 : 1))
                    problems.Add($"entry {i}: not in a slab of its class and kind");
                else if (*Slabs[movable ? 0 : 1].ReverseMapWord(e->Address, c) != (int)i)
                    problems.Add($"entry {i}: reverse map names {*Slabs[movable ? 0 : 1].ReverseMapWord(e->Address, c)}");
                slotsPerSlab[head] = slotsPerSlab.GetValueOrDefault(head) + 1;
            }
        }
        (long bytes, long blocks) = LiveTotals();
        if (bytes != liveBytes || blocks != liveBlocks) problems.Add($"live counters say {bytes} B in {blocks} blocks; entries hold {liveBytes} B in {liveBlocks}");

        // A slab's RefCount is its live blocks plus the slots cached by threads.
        var cached = new Dictionary<int, int>();
        foreach (ThreadCache tc in _caches)
            for (int si = 0; si < tc.Slots.Length; si++)
                for (int k = 0; k < tc.SlotCount[si]; k++)
                {
                    int head = Map.HeadOf(Map.PageOf(tc.Slots[si][k]));
                    cached[head] = cached.GetValueOrDefault(head) + 1;
                }
        for (int page = 0; page < Map.PageCount; page++)
        {
            ref PageDescriptor d = ref Map.Page(page);
            if (d.Kind != PageKind.SlabHead) continue;
            int expected = slotsPerSlab.GetValueOrDefault(page) + cached.GetValueOrDefault(page);
            if (d.RefCount != expected) problems.Add($"slab {page}: RefCount {d.RefCount} but {expected} slots are live or cached");
        }
        return problems;
    }

    /// <summary>For tests: true when every pageblock of the arena is wholly free (after draining caches and
    /// releasing retained empty slabs).</summary>
    internal bool AllPageblocksFree()
    {
        DrainThreadCaches();
        ReleaseEmptySlabs();
        for (int pb = 0; pb < Map.PageblockCount; pb++)
        {
            Zone z = ZoneOf(pb << Map.PageblockOrder);
            lock (z.Lock) if (!z.IsPageblockFreeLocked(pb)) return false;
        }
        return true;
    }
}
