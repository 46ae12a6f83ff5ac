namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// The kernel's external-fragmentation measures (mm/vmstat.c, mm/compaction.c), computed from a zone's free
/// counts per order. All take <c>freeBlocks[o]</c> = free blocks of order <c>o</c>, summed over migrate types.
/// </summary>
public static class Fragmentation
{
    /// <summary>fill_contig_page_info: total free pages, total free blocks, and free blocks able to hold a request of
    /// <paramref name="order"/>, counted in units of that order.</summary>
    public static (long freePages, long freeBlocksTotal, long freeBlocksSuitable) ContigPageInfo(ReadOnlySpan<long> freeBlocks, int order)
    {
        long pages = 0, total = 0, suitable = 0;
        for (int o = 0; o < freeBlocks.Length; o++)
        {
            long blocks = freeBlocks[o];
            total += blocks;
            pages += blocks << o;
            if (o >= order) suitable += blocks << (o - order);
        }
        return (pages, total, suitable);
    }

    /// <summary>
    /// __fragmentation_index, in thousandths: 0 when there is no free block (a failure would be for lack of memory);
    /// -1000 when a suitable block exists (no failure); otherwise toward 1000 as the failure is more due to
    /// fragmentation: <c>1000 - (1000 + free_pages * 1000 / 2^order) / free_blocks_total</c>.
    /// </summary>
    public static int FragmentationIndex(ReadOnlySpan<long> freeBlocks, int order)
    {
        (long pages, long total, long suitable) = ContigPageInfo(freeBlocks, order);
        if (total == 0) return 0;
        if (suitable > 0) return -1000;
        return (int)(1000 - (1000 + pages * 1000 / (1L << order)) / total);
    }

    /// <summary>unusable_free_index, in thousandths: the share of free memory that cannot serve a request of
    /// <paramref name="order"/>; 1000 when nothing is free.</summary>
    public static int UnusableFreeIndex(ReadOnlySpan<long> freeBlocks, int order)
    {
        (long pages, _, long suitable) = ContigPageInfo(freeBlocks, order);
        if (pages == 0) return 1000;
        return (int)((pages - (suitable << order)) * 1000 / pages);
    }

    /// <summary>extfrag_for_order, in percent: <c>(free_pages - suitable &lt;&lt; order) * 100 / free_pages</c>;
    /// 0 when nothing is free. The proactive compactor's score at pageblock order.</summary>
    public static int ExtfragForOrder(ReadOnlySpan<long> freeBlocks, int order)
    {
        (long pages, _, long suitable) = ContigPageInfo(freeBlocks, order);
        if (pages == 0) return 0;
        return (int)((pages - (suitable << order)) * 100 / pages);
    }

    /// <summary>The proactive watermarks for a proactiveness in [0, 100]: low = 100 - proactiveness (at least 5),
    /// high = min(low + min(10, low / 2), 100). Default 20 gives 80 and 90.</summary>
    public static (int low, int high) Watermarks(int proactiveness)
    {
        int low = Math.Max(100 - proactiveness, 5);
        return (low, Math.Min(low + Math.Min(10, low / 2), 100));
    }
}
