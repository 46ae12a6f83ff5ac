using System.Diagnostics;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Pages;

/// <summary>
/// The page allocator: the arena's zones, the zonelist that decides which zone serves a request, page runs and slab
/// pages, and every write of a run's or slab's page descriptors (native-layout.md, "Zones and migrate types").
/// </summary>
/// <remarks>
/// Zones are whole max-order blocks (two pageblocks), the normal zone first. The split follows
/// <see cref="HeapOptions.MovableZonePercent"/>, except that a heap with fewer max-order blocks than it takes to give
/// each zone one keeps the normal zone: unmovable blocks can only live there, while movable ones fall back to it.
/// Lock ordering: this class takes one zone lock at a time and nothing inside it (native-layout.md, "Lock ordering").
/// </remarks>
internal sealed class PageAllocator
{
    public readonly PageMap Map;
    public readonly ArenaMemory Memory;
    /// <summary>The normal zone (unmovable blocks, movable fallback); null when the movable zone is the whole arena.</summary>
    public readonly Zone? Normal;
    /// <summary>The movable zone (movable blocks only); null when the normal zone is the whole arena.</summary>
    public readonly Zone? Movable;
    /// <summary>The zones that exist, normal first.</summary>
    public readonly Zone[] Zones;
    /// <summary>The poison of free storage (off unless <see cref="HeapOptions.PoisonFreedMemory"/>).</summary>
    public readonly FreePoison Poison;

    public PageAllocator(PageMap map, ArenaMemory memory, int movableZonePercent, bool poisonFreedMemory = false)
    {
        Map = map;
        Memory = memory;
        Poison = new FreePoison(poisonFreedMemory, map.PageSize);
        int blockPages = 1 << map.MaxOrder;
        int blocks = map.PageCount / blockPages;
        int split = (blocks - MovableBlocks(blocks, movableZonePercent)) * blockPages;
        if (split > 0) Normal = new Zone(ZoneKind.Normal, 0, split, map, memory, MigrateType.Unmovable);
        if (split < map.PageCount) Movable = new Zone(ZoneKind.Movable, split, map.PageCount, map, memory, MigrateType.Movable);
        Zones = Normal == null ? [Movable!] : Movable == null ? [Normal] : [Normal, Movable];
    }

    /// <summary>Native metadata bytes in use: the page descriptors below each zone's frontier (the rest of the array
    /// was never written, so it is not resident) plus the pageblock bitmap. Lock-free: the frontiers are read racily
    /// (see <see cref="Zone.Frontier"/>), so the value may lag a concurrent allocation by a max-order block.</summary>
    public unsafe long MetadataBytes
    {
        get
        {
            long pages = 0;
            foreach (Zone z in Zones) pages += z.Frontier - z.Start;
            return pages * sizeof(PageDescriptor) + Map.PageblockBitmapBytes;
        }
    }

    /// <summary>How many of an arena's <paramref name="blocks"/> max-order blocks the movable zone gets for
    /// <paramref name="movableZonePercent"/>. Each zone the percentage asks for gets at least one block; when there are
    /// too few, the normal zone wins. The product is taken in 64 bits: 2^26 blocks (16-page pageblocks near the
    /// largest arena) times 100 would overflow an int.</summary>
    public static int MovableBlocks(int blocks, int movableZonePercent)
    {
        int movableBlocks = (int)Math.Round((long)blocks * movableZonePercent / 100.0);
        if (movableZonePercent < 100) movableBlocks = Math.Min(movableBlocks, blocks - 1);
        if (movableZonePercent > 0 && blocks >= 2) movableBlocks = Math.Max(movableBlocks, 1);
        return movableBlocks;
    }

    /// <summary>Bytes of free blocks purged and not reused since: committed, but not resident (racy sum of the zones'
    /// counters; a heuristic's and a statistic's input).</summary>
    public long PurgedFreeBytes
    {
        get
        {
            long pages = 0;
            foreach (Zone z in Zones) pages += z.PurgedPages;
            return pages << Map.PageShift;
        }
    }

    /// <summary>What the arena keeps resident, as far as the heap can tell: committed bytes less the purged free
    /// blocks (pages of a committed pageblock the program never touched count as resident too).</summary>
    public long ResidentBytesEstimate => Memory.CommittedBytes - PurgedFreeBytes;

    /// <summary>Pages of the larger zone: the longest run any request could get.</summary>
    public int LargestZonePages => Math.Max(Normal?.PageCount ?? 0, Movable?.PageCount ?? 0);

    /// <summary>The zone holding <paramref name="page"/>.</summary>
    public Zone ZoneOf(int page) => Movable != null && Movable.Contains(page) ? Movable : Normal!;

    /// <summary>
    /// Allocates an exact run of <paramref name="pages"/> for one large block whose handle entry is
    /// <paramref name="handle"/>, and writes its descriptors under the zone lock (so a reader holding that lock never
    /// sees them half-written). Takes one zone lock at a time. Returns the first page or -1.
    /// </summary>
    public int AllocateRun(int pages, BlockKind kind, uint handle) => Allocate(pages, kind, handle, sizeClass: -1);

    /// <summary>Like <see cref="AllocateRun"/> for the pages of a new, empty slab of <paramref name="sizeClass"/>.</summary>
    public int AllocateSlab(int pages, BlockKind kind, int sizeClass) => Allocate(pages, kind, 0, sizeClass);

    /// <summary>
    /// The zonelist: unmovable requests from the normal zone; movable ones from the movable zone, falling back to
    /// movable pageblocks of the normal zone (like the kernel's ZONE_MOVABLE then ZONE_NORMAL).
    /// </summary>
    private int Allocate(int pages, BlockKind kind, uint handle, int sizeClass)
    {
        MigrateType type = kind == BlockKind.Movable ? MigrateType.Movable : MigrateType.Unmovable;
        Zone? first = kind == BlockKind.Movable ? Movable : Normal;
        Zone? second = kind == BlockKind.Movable ? Normal : null;
        foreach (Zone? zone in (ReadOnlySpan<Zone?>)[first, second])
        {
            if (zone == null) continue;
            lock (zone.Lock)
            {
                int start = zone.AllocatePagesLocked(pages, type, mayCrossPageblock: sizeClass < 0);
                if (start < 0) continue;
                if (sizeClass >= 0) InitSlabLocked(zone, start, pages, sizeClass, kind);
                else InitRunLocked(zone, start, pages, handle);
                return start;
            }
        }
        return -1;
    }

    /// <summary>Frees pages [start, start + count), which held a block or a slab, to their zone; with poisoning on
    /// they are poisoned first (outside the zone lock: the pages are still the caller's). Takes the zone lock.</summary>
    public void FreePages(int start, int count)
    {
        if (Poison.Enabled) FreePoison.Fill(Map.AddressOf(start), (long)count << Map.PageShift);
        ZoneOf(start).FreePageRange(start, count);
    }

    /// <summary>Like <see cref="FreePages"/> for pages that hold the poison already (a run a cache kept, poisoned
    /// when its block was freed). Takes the zone lock.</summary>
    public void FreePoisonedPages(int start, int count) => ZoneOf(start).FreePageRange(start, count);

    /// <summary>Writes a run's descriptors: the head names its handle entry, the tails name their head.
    /// Caller holds the lock of <paramref name="zone"/>, which owns the pages.</summary>
    public void InitRunLocked(Zone zone, int start, int count, uint handle)
    {
        Debug.Assert(zone.Lock.IsHeldByCurrentThread && zone.Contains(start));
        Map.Page(start).InitRunHead(handle, count);
        for (int p = start + 1; p < start + count; p++) Map.Page(p).InitTail(start);
    }

    /// <summary>Writes a new, empty slab's head and tail descriptors. Caller holds the lock of <paramref name="zone"/>.</summary>
    public void InitSlabLocked(Zone zone, int start, int count, int sizeClass, BlockKind kind)
    {
        Debug.Assert(zone.Lock.IsHeldByCurrentThread && zone.Contains(start));
        Map.Page(start).InitSlabHead(sizeClass, kind);
        for (int p = start + 1; p < start + count; p++) Map.Page(p).InitTail(start);
    }
}
