using System.Globalization;
using System.Text;

namespace Compaction.Allocator.Diagnostics;

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
    public int FragmentationIndex(int order) => Diagnostics.Fragmentation.FragmentationIndex(FreeBlocksPerOrder(), order);
    /// <summary>The kernel's unusable free space index for <paramref name="order"/> (thousandths).</summary>
    public int UnusableFreeIndex(int order) => Diagnostics.Fragmentation.UnusableFreeIndex(FreeBlocksPerOrder(), order);
    /// <summary>The kernel's extfrag score for <paramref name="order"/> (percent).</summary>
    public int ExtfragScore(int order) => Diagnostics.Fragmentation.ExtfragForOrder(FreeBlocksPerOrder(), order);

    /// <summary>One line per index, one column per order, like /sys/kernel/debug/extfrag/*.</summary>
    public string FragmentationTable()
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"Zone {Name,-8} unusable    "); for (int o = 0; o < Orders; o++) sb.Append(CultureInfo.InvariantCulture, $" {UnusableFreeIndex(o) / 1000.0,6:0.000}"); sb.AppendLine();
        sb.Append(CultureInfo.InvariantCulture, $"Zone {Name,-8} extfrag_index"); for (int o = 0; o < Orders; o++) sb.Append(CultureInfo.InvariantCulture, $" {FragmentationIndex(o) / 1000.0,6:0.000}"); sb.AppendLine();
        return sb.ToString();
    }
}
