using Compaction.Allocator;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The zone pass pours the sparse slabs it moves into dense ones instead of giving each a slab of its own
/// (native-layout.md, section 9, "Open slabs"), so that no consolidation has to copy those blocks again. Behaviour and
/// counts only.
/// </summary>
public class OpenSlabTests(ITestOutputHelper output)
{
    private const int PageblockPages = 64;

    /// <summary>A heap of small blocks, three in four freed at random, with free committed room above it. Caches off:
    /// a direct zone pass needs no drain.</summary>
    private static (NativeHeap heap, List<BlockHandle> kept) Fragmented(int seed, Func<Random, int> size, int blocks)
    {
        NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false, arenaBytes: 32L << 20, pageblockPages: PageblockPages);
        var rng = new Random(seed);
        var all = new List<BlockHandle>();
        for (int i = 0; i < blocks; i++)
        {
            BlockHandle h = heap.Allocate(size(rng));
            TestHeaps.Fill(heap, h);
            all.Add(h);
        }
        TestHeaps.CommitFreeSpaceAbove(heap, 8);
        var kept = new List<BlockHandle>();
        foreach (BlockHandle h in all)
            if (rng.Next(4) == 0) kept.Add(h); else heap.Free(h);
        return (heap, kept);
    }

    private static SlabClassStatistics ClassOf(NativeHeap heap, int size) =>
        heap.GetStatistics().SlabClasses.Single(c => c.Kind == BlockKind.Movable && c.SlotSize == size);

    [Fact]
    public void AZonePassPoursTheSparseSlabsItMovesIntoDenseOnes()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        const int Size = 256;
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, _ => Size, 8_000);
        using (heap)
        {
            SlabClassStatistics before = ClassOf(heap, Size);
            Dictionary<BlockHandle, nint> at = kept.ToDictionary(h => h, heap.CurrentAddress);
            lock (heap.Compactor!.RunLock) heap.Compactor.CompactZone(new CompactControl { Mode = CompactMode.SyncLight, WholeZone = true });
            SlabClassStatistics after = ClassOf(heap, Size);
            int moved = kept.Count(h => heap.CurrentAddress(h) != at[h]);
            long dense = (after.UsedSlots + after.SlotsPerSlab - 1) / after.SlotsPerSlab;
            output.WriteLine($"{before.Slabs} slabs -> {after.Slabs} ({dense} would hold every block), {moved} of {kept.Count} blocks moved");
            Assert.True(moved >= kept.Count / 2, $"the pass moved {moved} of {kept.Count} blocks");
            // A slab moved whole into a fresh slab of its own stays as sparse as it was (one block in four): poured
            // into dense slabs, the blocks the pass moved need a quarter of the slabs they came from.
            Assert.True(after.Slabs * 2 <= before.Slabs, $"{before.Slabs} slabs -> {after.Slabs}");
            foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }
}
