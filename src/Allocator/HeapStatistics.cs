using System.Text;

namespace Compaction.Allocator;

/// <summary>A snapshot of a heap's memory and free lists (<see cref="NativeHeap.GetStatistics"/>).</summary>
/// <remarks>Each zone and each size class is read under its own lock, so each is self-consistent; the snapshot as a
/// whole is not atomic while other threads allocate. Live counts are sums of per-thread counters.</remarks>
public sealed class HeapStatistics
{
    internal HeapStatistics() { }

    /// <summary>Bytes requested by live blocks.</summary>
    public long LiveBytes { get; internal init; }
    /// <summary>Live blocks.</summary>
    public long LiveBlocks { get; internal init; }
    /// <summary>Bytes of the arena currently committed (read-write, possibly resident).</summary>
    public long CommittedBytes { get; internal init; }
    /// <summary>Bytes of address space reserved for the arena.</summary>
    public long ReservedBytes { get; internal init; }
    /// <summary>Bytes decommitted since the heap was created: wholly free pageblocks whose resident memory went back to
    /// the OS (the range stays mapped, and is committed again on reuse without a system call).</summary>
    public long DecommittedBytes { get; internal init; }
    /// <summary>Bytes of free pages purged (madvise DONTNEED inside pageblocks still in use) since the heap was created.</summary>
    public long PurgedBytes { get; internal init; }
    /// <summary>Decommits and purges the OS refused since the heap was created. Each left its memory committed (and
    /// resident), counted in <see cref="CommittedBytes"/> and not in <see cref="DecommittedBytes"/> or
    /// <see cref="PurgedBytes"/>; a later release or trim tries again.</summary>
    public long DecommitFailures { get; internal init; }
    /// <summary>Native metadata: page descriptors, pageblock bitmap and handle table.</summary>
    public long MetadataBytes { get; internal init; }
    /// <summary>Page size in bytes.</summary>
    public int PageSize { get; internal init; }
    /// <summary>Pages per pageblock.</summary>
    public int PageblockPages { get; internal init; }
    /// <summary>Blocks relocated since the heap was created, and their bytes.</summary>
    public long BlocksMigrated { get; internal init; }
    /// <summary>Bytes copied by migrations.</summary>
    public long BytesMigrated { get; internal init; }
    /// <summary>Slots held in per-thread caches.</summary>
    public long CachedSlots { get; internal init; }
    /// <summary>Compaction counters since the heap was created, by the kernel's names.</summary>
    public CompactionStatistics Compaction { get; internal init; } = new();
    /// <summary>The background compactor's score: extfrag at pageblock order of the movable zone, in percent.</summary>
    public int FragmentationScore { get; internal init; }
    /// <summary>The normal zone, then the movable zone (a zone of zero pages is left out).</summary>
    public IReadOnlyList<ZoneStatistics> Zones { get; internal init; } = [];
    /// <summary>Slab occupancy per size class and block kind (classes with no slab are left out).</summary>
    public IReadOnlyList<SlabClassStatistics> SlabClasses { get; internal init; } = [];

    /// <summary>Free page blocks per order and zone, like /proc/buddyinfo.</summary>
    public string BuddyInfo()
    {
        var sb = new StringBuilder();
        foreach (ZoneStatistics z in Zones)
        {
            sb.Append($"Zone {z.Name,-8}");
            for (int o = 0; o < z.Orders; o++) sb.Append($" {z.FreeBlocks(o, MigrateType.Unmovable) + z.FreeBlocks(o, MigrateType.Movable),6}");
            sb.AppendLine();
        }
        return sb.ToString();
    }

    /// <summary>Free page blocks per order, zone and migrate type, and pageblocks per type, like /proc/pagetypeinfo.</summary>
    public string PageTypeInfo()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"Page block order: {System.Numerics.BitOperations.Log2((uint)PageblockPages)}");
        sb.AppendLine($"Pages per block:  {PageblockPages}");
        foreach (ZoneStatistics z in Zones)
            foreach (MigrateType t in Enum.GetValues<MigrateType>())
            {
                sb.Append($"Zone {z.Name,-8} type {t,-10}");
                for (int o = 0; o < z.Orders; o++) sb.Append($" {z.FreeBlocks(o, t),6}");
                sb.AppendLine();
            }
        sb.AppendLine("Number of blocks type     Unmovable    Movable");
        foreach (ZoneStatistics z in Zones)
            sb.AppendLine($"Zone {z.Name,-8}          {z.Pageblocks(MigrateType.Unmovable),9} {z.Pageblocks(MigrateType.Movable),10}");
        return sb.ToString();
    }

    /// <inheritdoc/>
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"live {LiveBytes:N0} B in {LiveBlocks:N0} blocks; committed {CommittedBytes:N0} B of {ReservedBytes:N0} B reserved; decommitted {DecommittedBytes:N0} B; metadata {MetadataBytes:N0} B");
        sb.Append(BuddyInfo());
        sb.AppendLine($"fragmentation score {FragmentationScore}%");
        foreach (SlabClassStatistics c in SlabClasses)
            sb.AppendLine($"  slab {c.Kind,-9} {c.SlotSize,6} B: {c.Slabs,5} slabs x {c.SlotsPerSlab,4} slots ({c.PagesPerSlab} pages), {c.UsedSlots,8} used ({c.Occupancy:P0})");
        return sb.ToString();
    }
}

/// <summary>One zone in a <see cref="HeapStatistics"/> snapshot.</summary>
public sealed class ZoneStatistics
{
    private readonly long[] _free;           // [order * 2 + type]
    private readonly int[] _pageblocks;      // [type]

    internal ZoneStatistics(string name, int pages, long freePages, int orders, long[] free, int[] pageblocks)
    {
        Name = name;
        Pages = pages;
        FreePages = freePages;
        Orders = orders;
        _free = free;
        _pageblocks = pageblocks;
    }

    /// <summary>"Normal" or "Movable".</summary>
    public string Name { get; }
    /// <summary>Pages in the zone.</summary>
    public int Pages { get; }
    /// <summary>Free pages in the zone.</summary>
    public long FreePages { get; }
    /// <summary>Number of buddy orders (0 .. Orders - 1).</summary>
    public int Orders { get; }
    /// <summary>Free blocks of 2^<paramref name="order"/> pages on the free list of <paramref name="type"/>.</summary>
    public long FreeBlocks(int order, MigrateType type) => _free[order * 2 + (int)type];
    /// <summary>Pageblocks of the zone whose migrate type is <paramref name="type"/>.</summary>
    public int Pageblocks(MigrateType type) => _pageblocks[(int)type];

    /// <summary>Free blocks per order, summed over migrate types.</summary>
    public long[] FreeBlocksPerOrder()
    {
        var free = new long[Orders];
        for (int o = 0; o < Orders; o++) free[o] = _free[o * 2] + _free[o * 2 + 1];
        return free;
    }

    /// <summary>The kernel's fragmentation index for a request of <paramref name="order"/> (thousandths; -1000 when
    /// a suitable block is free).</summary>
    public int FragmentationIndex(int order) => Allocator.Fragmentation.FragmentationIndex(FreeBlocksPerOrder(), order);
    /// <summary>The kernel's unusable free space index for <paramref name="order"/> (thousandths).</summary>
    public int UnusableFreeIndex(int order) => Allocator.Fragmentation.UnusableFreeIndex(FreeBlocksPerOrder(), order);
    /// <summary>The kernel's extfrag score for <paramref name="order"/> (percent).</summary>
    public int ExtfragScore(int order) => Allocator.Fragmentation.ExtfragForOrder(FreeBlocksPerOrder(), order);

    /// <summary>One line per index, one column per order, like /sys/kernel/debug/extfrag/*.</summary>
    public string FragmentationTable()
    {
        var sb = new StringBuilder();
        sb.Append($"Zone {Name,-8} unusable    "); for (int o = 0; o < Orders; o++) sb.Append($" {UnusableFreeIndex(o) / 1000.0,6:0.000}"); sb.AppendLine();
        sb.Append($"Zone {Name,-8} extfrag_index"); for (int o = 0; o < Orders; o++) sb.Append($" {FragmentationIndex(o) / 1000.0,6:0.000}"); sb.AppendLine();
        return sb.ToString();
    }
}

/// <summary>One size class of one block kind in a <see cref="HeapStatistics"/> snapshot.</summary>
public sealed record SlabClassStatistics(BlockKind Kind, int SlotSize, int PagesPerSlab, int SlotsPerSlab, long Slabs, long UsedSlots)
{
    /// <summary>Used slots over slots in all slabs of the class.</summary>
    public double Occupancy => Slabs == 0 ? 0 : UsedSlots / (double)(Slabs * SlotsPerSlab);
}
