namespace Compaction.Allocator.Slabs;

/// <summary>One size class of a <see cref="SlabAllocator"/>; every field is protected by <see cref="Lock"/>.</summary>
internal sealed class SlabClass
{
    public readonly Lock Lock = new();
    public readonly int Index;
    public readonly int[] GroupHeads = new int[SlabAllocator.Groups];
    public readonly int[] GroupCounts = new int[SlabAllocator.Groups];
    public long Slabs;
    public long UsedSlots;
    public long SlabsCarved;
    public long SlabsFreed;

    public SlabClass(int index)
    {
        Index = index;
        Array.Fill(GroupHeads, -1);
    }

    public int EmptySlabs => GroupCounts[SlabAllocator.EmptyGroup];
}
