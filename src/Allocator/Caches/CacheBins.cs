using System.Runtime.CompilerServices;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Caches;

/// <summary>
/// One stack of a thread cache or of the depot: free handle entries bound to storage of one kind and one size (a
/// slab class, or a run's page count), kept in a shared array at <see cref="Offset"/>. Each item is the handle the
/// entry will be issued with next (its current generation and its index), so an allocation need not read the entry.
/// </summary>
internal struct CacheBin
{
    public int Count;
    public int Capacity;
    public int Offset;
    private int _padding;   // 16 bytes: four bins to a cache line, found by a shift
}

/// <summary>
/// How a heap's caches are cut into bins (native-layout.md, "Per-thread caches"): one bin per (kind, slab class),
/// then one per (kind, run page count) for runs up to <see cref="MaxRunPages"/> pages (1 MiB); each bin's capacity
/// in a thread cache and in the depot.
/// </summary>
internal sealed class CacheBins
{
    /// <summary>Bytes a thread cache keeps per slab class, at most (as a count: 8 to 512 blocks).</summary>
    public const int SlabBinBytes = 32 * 1024;
    /// <summary>Bytes a thread cache keeps per run page count, at most (2 to 16 runs).</summary>
    public const int RunBinBytes = 1024 * 1024;
    /// <summary>The largest run cached: 1 MiB.</summary>
    public const int MaxRunBytes = 1024 * 1024;
    /// <summary>The depot keeps this many times a thread cache's capacity per slab class.</summary>
    public const int DepotSlabFactor = 4;
    /// <summary>The depot keeps at most this many runs per page count (and at most its byte cap in all).</summary>
    public const int DepotRunCapacity = 256;

    public readonly int Classes;
    public readonly int MaxRunPages;
    public readonly int PageShift;
    /// <summary>Bins of slab classes: [0, SlabBins); run bins follow.</summary>
    public readonly int SlabBins;
    public readonly int Count;
    public readonly int[] ThreadCapacity;
    public readonly int[] DepotCapacity;

    public CacheBins(SizeClasses classes, int pageShift)
    {
        Classes = classes.Count;
        PageShift = pageShift;
        MaxRunPages = MaxRunBytes >> pageShift;
        SlabBins = 2 * Classes;
        Count = SlabBins + 2 * MaxRunPages;
        ThreadCapacity = new int[Count];
        DepotCapacity = new int[Count];
        for (int b = 0; b < Count; b++)
        {
            if (b < SlabBins)
            {
                ThreadCapacity[b] = Math.Clamp(SlabBinBytes / classes.Size[b % Classes], 8, 512);
                DepotCapacity[b] = ThreadCapacity[b] * DepotSlabFactor;
            }
            else
            {
                ThreadCapacity[b] = (int)Math.Clamp(RunBinBytes / RunBytes(b), 2L, 16L);
                DepotCapacity[b] = DepotRunCapacity;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int SlabBin(BlockKind kind, int c) => (int)kind * Classes + c;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int RunBin(BlockKind kind, int pages) => SlabBins + (int)kind * MaxRunPages + pages - 1;

    public bool IsRun(int bin) => bin >= SlabBins;
    public BlockKind KindOf(int bin) => (BlockKind)(bin < SlabBins ? bin / Classes : (bin - SlabBins) / MaxRunPages);
    public int ClassOf(int bin) => bin % Classes;
    public int PagesOf(int bin) => (bin - SlabBins) % MaxRunPages + 1;
    public long RunBytes(int bin) => (long)PagesOf(bin) << PageShift;

    /// <summary>Lays out <paramref name="capacity"/> bins back to back: the bins and the item array they share.</summary>
    public static (CacheBin[] bins, ulong[] items) Allocate(int[] capacity)
    {
        var bins = new CacheBin[capacity.Length];
        int offset = 0;
        for (int b = 0; b < bins.Length; b++)
        {
            bins[b].Capacity = capacity[b];
            bins[b].Offset = offset;
            offset += capacity[b];
        }
        return (bins, new ulong[offset]);
    }
}
