using Compaction.Allocator;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// A small block is copied once by a compaction (native-layout.md, section 9, "Move once"): consolidation fills the
/// class's highest slabs, which the zone pass leaves in place, and the zone pass pours the sparse slabs it moves into
/// dense ones instead of giving each a slab of its own. Behaviour and counts only.
/// </summary>
public class MoveOnceTests(ITestOutputHelper output)
{
    private const int PageblockPages = 64;

    /// <summary>A heap of small blocks, three in four freed at random, with <paramref name="roomAbove"/> pageblocks of
    /// free committed room above it. Caches off: a direct zone pass needs no drain.</summary>
    private static (NativeHeap heap, List<BlockHandle> kept) Fragmented(int seed, Func<Random, int> size, int blocks, int roomAbove)
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
        if (roomAbove > 0) TestHeaps.CommitFreeSpaceAbove(heap, roomAbove);
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
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, _ => Size, 8_000, roomAbove: 8);
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

    [Fact]
    public void AnExplicitCompactionCopiesFewerBytesThanTheSmallBlocksHold()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        (NativeHeap heap, List<BlockHandle> kept) = Fragmented(seed, rng => rng.Next(16, 512), 20_000, roomAbove: 0);
        using (heap)
        {
            long live = heap.GetStatistics().SlabClasses.Where(c => c.Kind == BlockKind.Movable).Sum(c => c.UsedSlots * (long)c.SlotSize);
            CompactionStatistics run = heap.Compact();
            output.WriteLine($"{run.BytesMoved} bytes moved, {live} bytes of live slots, {run.PagesCompacted} slab pages compacted");
            Assert.True(run.PagesCompacted >= 4 * PageblockPages, $"only {run.PagesCompacted} slab pages compacted");
            // Consolidation puts blocks in the class's highest slabs, which the zone pass does not move again; when
            // it put them in the fullest slabs, wherever they lay, the zone pass copied many of them a second time
            // (1.4x the live bytes in the throughput benchmark).
            Assert.True(run.BytesMoved <= live, $"{run.BytesMoved} bytes moved for {live} bytes of live slots");
            foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            TestHeaps.AssertValid(heap);
        }
    }
}
