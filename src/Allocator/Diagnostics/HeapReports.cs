using System.Globalization;
using System.Text;

namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// The kernel's text reports of free memory, for an arena, in the kernel's formats (mm/vmstat.c): /proc/buddyinfo,
/// /proc/pagetypeinfo, and debugfs's extfrag/extfrag_index and extfrag/unusable_index, one "Node 0" line per zone
/// (Normal, then Movable). Built from a <see cref="HeapStatistics"/> snapshot, so tools written for the kernel's
/// files read them. The zone's part above its frontier (never handed out, so on no free list) is counted as the free
/// max-order blocks it is.
/// </summary>
public static class HeapReports
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly MigrateType[] s_types = [MigrateType.Unmovable, MigrateType.Movable];

    /// <summary>/proc/buddyinfo: free blocks per order.</summary>
    public static string BuddyInfo(HeapStatistics stats)
    {
        var sb = new StringBuilder();
        foreach (ZoneStatistics z in stats.Zones)
        {
            sb.Append(Inv, $"Node 0, zone {z.Name,8} ");
            long[] free = FreeBlocks(z);
            foreach (long n in free) sb.Append(Inv, $"{n,6} ");
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>/proc/pagetypeinfo: the pageblock size, free blocks per order and migrate type, pageblocks per type.</summary>
    public static string PagetypeInfo(HeapStatistics stats)
    {
        var sb = new StringBuilder();
        sb.Append(Inv, $"Page block order: {System.Numerics.BitOperations.Log2((uint)stats.PageblockPages)}\n");
        sb.Append(Inv, $"Pages per block:  {stats.PageblockPages}\n\n");
        int orders = stats.Zones.Count > 0 ? stats.Zones[0].Orders : 0;
        sb.Append(Inv, $"{"Free pages count per migrate type at order",-43} ");
        for (int o = 0; o < orders; o++) sb.Append(Inv, $"{o,6} ");
        sb.Append('\n');
        foreach (ZoneStatistics z in stats.Zones)
            foreach (MigrateType t in s_types)
            {
                sb.Append(Inv, $"Node {0,4}, zone {z.Name,8}, type {t,12} ");
                for (int o = 0; o < z.Orders; o++) sb.Append(Inv, $"{FreeBlocks(z, o, t),6} ");
                sb.Append('\n');
            }
        sb.Append(Inv, $"\n{"Number of blocks type ",-23}");
        foreach (MigrateType t in s_types) sb.Append(Inv, $"{t,12} ");
        sb.Append('\n');
        foreach (ZoneStatistics z in stats.Zones)
        {
            sb.Append(Inv, $"Node 0, zone {z.Name,8} ");
            foreach (MigrateType t in s_types) sb.Append(Inv, $"{z.Pageblocks(t),12} ");
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>extfrag/extfrag_index: the fragmentation index per order (-1.000: a suitable block is free).</summary>
    public static string ExtfragIndex(HeapStatistics stats) =>
        PerOrder(stats, (free, o) => Fragmentation.FragmentationIndex(free, o), twoDigits: true);

    /// <summary>extfrag/unusable_index: the share of free memory that cannot serve each order.</summary>
    public static string UnusableIndex(HeapStatistics stats) =>
        PerOrder(stats, (free, o) => Fragmentation.UnusableFreeIndex(free, o), twoDigits: false);

    private delegate int IndexOf(ReadOnlySpan<long> free, int order);

    private static string PerOrder(HeapStatistics stats, IndexOf index, bool twoDigits)
    {
        var sb = new StringBuilder();
        foreach (ZoneStatistics z in stats.Zones)
        {
            sb.Append(Inv, $"Node 0, zone {z.Name,8} ");
            long[] free = FreeBlocks(z);
            for (int o = 0; o < z.Orders; o++)
            {
                int i = index(free, o);
                // The kernel prints index / 1000 and index % 1000 ("%2d.%03d " for extfrag_index): -1000 is "-1.000".
                string whole = (i / 1000).ToString(Inv);
                sb.Append(twoDigits ? whole.PadLeft(2) : whole).Append('.').Append(Math.Abs(i % 1000).ToString("000", Inv)).Append(' ');
            }
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>Free blocks per order over both types, the never-handed-out part counted as max-order blocks.</summary>
    private static long[] FreeBlocks(ZoneStatistics z)
    {
        var free = new long[z.Orders];
        for (int o = 0; o < z.Orders; o++)
            foreach (MigrateType t in s_types) free[o] += FreeBlocks(z, o, t);
        return free;
    }

    private static long FreeBlocks(ZoneStatistics z, int order, MigrateType type)
    {
        long n = z.FreeBlocks(order, type);
        if (order == z.Orders - 1 && type == InitialType(z)) n += AboveFrontier(z) >> order;
        return n;
    }

    /// <summary>Free pages on no list: the zone's part above its frontier (whole max-order blocks).</summary>
    private static long AboveFrontier(ZoneStatistics z)
    {
        long listed = 0;
        for (int o = 0; o < z.Orders; o++) listed += (z.FreeBlocks(o, MigrateType.Movable) + z.FreeBlocks(o, MigrateType.Unmovable)) << o;
        return z.FreePages - listed;
    }

    private static MigrateType InitialType(ZoneStatistics z) => z.Name == "Movable" ? MigrateType.Movable : MigrateType.Unmovable;
}
