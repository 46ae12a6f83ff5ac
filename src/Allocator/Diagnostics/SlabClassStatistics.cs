namespace Compaction.Allocator.Diagnostics;

/// <summary>One size class of one block kind in a <see cref="HeapStatistics"/> snapshot.</summary>
public sealed record SlabClassStatistics(BlockKind Kind, int SlotSize, int PagesPerSlab, int SlotsPerSlab, long Slabs, long UsedSlots)
{
    /// <summary>Used slots over slots in all slabs of the class.</summary>
    public double Occupancy => Slabs == 0 ? 0 : UsedSlots / (double)(Slabs * SlotsPerSlab);
}
