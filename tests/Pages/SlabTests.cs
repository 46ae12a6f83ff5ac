using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>Size-class slabs, observed through a heap without per-thread caches (so every allocation and free
/// reaches the slabs at once) and its internal slab and page metadata.</summary>
public sealed class SlabTests
{
    private const long BlockSize = 500;

    private sealed class Fixture : IDisposable
    {
        public readonly NativeHeap Heap = TestHeaps.Small(caches: false);
        public readonly int Class;
        public readonly int Capacity;
        public readonly SlabClass Cls;

        public Fixture()
        {
            Class = Heap.Classes.ClassOf(BlockSize);
            Capacity = Heap.Classes.SlotsPerSlab[Class];
            Cls = Heap.Slabs[(int)BlockKind.Unmovable].Class[Class];
        }

        public int SlabOf(BlockHandle h) => SlabAt(Heap.GetStablePointer(h));

        public int SlabAt(nint address) => Heap.Map.HeadOf(Heap.Map.PageOf(address));

        /// <summary>Allocates <paramref name="slabs"/> full slabs of unmovable blocks, grouped by slab in carving order.</summary>
        public List<List<BlockHandle>> FillSlabs(int slabs)
        {
            var blocks = Enumerable.Range(0, slabs * Capacity).Select(_ => Heap.Allocate(BlockSize, BlockKind.Unmovable)).ToList();
            var bySlab = blocks.GroupBy(SlabOf).Select(g => g.ToList()).ToList();
            Assert.Equal(slabs, bySlab.Count);
            Assert.All(bySlab, s => Assert.Equal(Capacity, s.Count));
            return bySlab;
        }

        public ref PageDescriptor Head(int page) => ref Heap.Map.Page(page);

        public void Dispose() => Heap.Dispose();
    }

    [Fact]
    public void SlabsAreFilledOneAtATime()
    {
        using var f = new Fixture();
        Assert.True(f.Capacity >= 8, "the class holds enough slots for quarter steps");
        List<List<BlockHandle>> slabs = f.FillSlabs(3);
        Assert.Equal(3, f.Cls.Slabs);
        Assert.Equal(3, f.Cls.GroupCounts[SlabAllocator.FullGroup]);
        TestHeaps.AssertValid(f.Heap);
        slabs.SelectMany(s => s).ToList().ForEach(f.Heap.Free);
    }

    [Fact]
    public void AllocationTakesFromTheFullestSlab()
    {
        using var f = new Fixture();
        List<List<BlockHandle>> slabs = f.FillSlabs(3);
        int nearlyEmpty = f.SlabOf(slabs[0][0]), nearlyFull = f.SlabOf(slabs[1][0]), half = f.SlabOf(slabs[2][0]);
        slabs[0].Skip(1).ToList().ForEach(f.Heap.Free);                      // 1 slot used
        f.Heap.Free(slabs[1][0]);                                            // capacity - 1 used
        slabs[2].Take(f.Capacity / 2).ToList().ForEach(f.Heap.Free);         // about half used

        BlockHandle next = f.Heap.Allocate(BlockSize, BlockKind.Unmovable);
        Assert.Equal(nearlyFull, f.SlabOf(next));
        Assert.Equal(SlabAllocator.FullGroup, f.Head(nearlyFull).SlabGroup);

        BlockHandle then = f.Heap.Allocate(BlockSize, BlockKind.Unmovable);
        Assert.Equal(half, f.SlabOf(then));                                  // the fullest left; never the nearly empty one
        Assert.Equal(1, f.Head(nearlyEmpty).RefCount);
        TestHeaps.AssertValid(f.Heap);
    }

    /// <summary>Consolidation's destination slots: the fullest slabs first, each filled before the next; every slot
    /// distinct, free, inside the slabs named, and the groups right after.</summary>
    [Fact]
    public void TakingFromTheFullestFillsTheFullestSlabsFirst()
    {
        using var f = new Fixture();
        List<List<BlockHandle>> slabs = f.FillSlabs(4);
        int[] heads = slabs.Select(s => f.SlabOf(s[0])).ToArray();
        // Free slots at random places, one slab per fullness group (the order within a group is the list's):
        // slab 0 keeps 1 block, slab 1 has 2 free (group 1), slab 2 has 3/8 free (group 2), slab 3 has 3/4 (group 3).
        var rng = new Random(5);
        List<BlockHandle> Drop(List<BlockHandle> s, int n)
        {
            List<BlockHandle> gone = s.OrderBy(_ => rng.Next()).Take(n).ToList();
            gone.ForEach(f.Heap.Free);
            return s.Except(gone).ToList();
        }
        int free1 = 2, free2 = f.Capacity * 3 / 8, free3 = f.Capacity * 3 / 4;
        List<BlockHandle>[] kept = [Drop(slabs[0], f.Capacity - 1), Drop(slabs[1], free1), Drop(slabs[2], free2), Drop(slabs[3], free3)];
        Assert.Equal([1, 2, 3], heads[1..].Select(h => (int)f.Head(h).SlabGroup));
        var taken = new nint[f.Capacity];
        var used = new List<int>();
        int n, want = free1 + free2 + 1;
        SlabAllocator slabAllocator = f.Heap.Slabs[(int)BlockKind.Unmovable];
        lock (f.Cls.Lock) n = slabAllocator.TakeFromFullestLocked(f.Cls, excludeHead: heads[0], taken, want, used);

        Assert.Equal(want, n);
        Assert.Equal([heads[1], heads[2], heads[3]], used);                  // fullest first; the excluded slab never
        Assert.Equal(f.Capacity, f.Head(heads[1]).RefCount);                 // each filled before the next is used
        Assert.Equal(f.Capacity, f.Head(heads[2]).RefCount);
        Assert.Equal(f.Capacity - free3 + 1, f.Head(heads[3]).RefCount);
        Assert.Equal(SlabAllocator.FullGroup, f.Head(heads[1]).SlabGroup);
        Assert.Equal(SlabAllocator.FullGroup, f.Head(heads[2]).SlabGroup);
        Assert.Equal(n, taken.Take(n).Distinct().Count());
        var live = kept.SelectMany(k => k).Select(h => f.Heap.GetStablePointer(h)).ToHashSet();
        Assert.All(taken.Take(n), slot =>
        {
            Assert.DoesNotContain(slot, live);                                 // a free slot, never a live block's
            Assert.Contains(f.SlabAt(slot), heads[1..]);
        });
        slabAllocator.FreeSlots(f.Class, taken.AsSpan(0, n));   // the slots taken are bound to no block: back first
        TestHeaps.AssertValid(f.Heap);
        kept.SelectMany(k => k).ToList().ForEach(f.Heap.Free);
    }

    [Fact]
    public void FullnessGroupsAreQuartersOfOccupancy()
    {
        for (int capacity = 1; capacity <= 200; capacity++)
            for (int used = 0; used <= capacity; used++)
            {
                int expected = used == capacity ? 0 : used == 0 ? 5
                    : 4 * used >= 3 * capacity ? 1 : 4 * used >= 2 * capacity ? 2 : 4 * used >= capacity ? 3 : 4;
                Assert.Equal(expected, SlabAllocator.GroupOf(used, capacity));
            }
    }

    [Fact]
    public void ASlabMovesBetweenFullnessGroupsAsItsBlocksAreFreed()
    {
        using var f = new Fixture();
        List<BlockHandle> slab = f.FillSlabs(1)[0];
        int head = f.SlabOf(slab[0]);
        var remaining = new List<BlockHandle>(slab);
        while (remaining.Count > 0)
        {
            f.Heap.Free(remaining[^1]);
            remaining.RemoveAt(remaining.Count - 1);
            int expected = SlabAllocator.GroupOf(remaining.Count, f.Capacity);
            Assert.Equal(expected, f.Head(head).SlabGroup);
            Assert.Equal(1, f.Cls.GroupCounts[expected]);
            Assert.Equal(1, f.Cls.GroupCounts.Sum());
        }
        Assert.Equal(SlabAllocator.EmptyGroup, f.Head(head).SlabGroup);   // the one empty slab a class keeps
        TestHeaps.AssertValid(f.Heap);
    }

    [Fact]
    public void AnEmptySlabBeyondTheRetainedOneIsFreedToTheBuddyAllocator()
    {
        using var f = new Fixture();
        List<List<BlockHandle>> slabs = f.FillSlabs(3);
        Zone zone = f.Heap.NormalZone!;
        int pagesPerSlab = f.Heap.Classes.PagesPerSlab[f.Class];
        long free = zone.FreePages;

        slabs[0].ForEach(f.Heap.Free);                  // empty, and the class keeps it
        Assert.Equal(3, f.Cls.Slabs);
        Assert.Equal(1, f.Cls.EmptySlabs);
        Assert.Equal(0, f.Cls.SlabsFreed);
        Assert.Equal(free, zone.FreePages);

        slabs[1].ForEach(f.Heap.Free);                  // a second empty slab goes back to the buddy allocator
        Assert.Equal(2, f.Cls.Slabs);
        Assert.Equal(1, f.Cls.SlabsFreed);
        Assert.Equal(free + pagesPerSlab, zone.FreePages);
        TestHeaps.AssertValid(f.Heap);

        slabs[2].ForEach(f.Heap.Free);
        Assert.Equal(1, f.Cls.Slabs);
        Assert.Equal(2, f.Cls.SlabsFreed);
        Assert.Equal(free + 2 * pagesPerSlab, zone.FreePages);
        TestHeaps.AssertValid(f.Heap);

        f.Heap.ReleaseFreeMemory();                     // and the retained one goes too when memory is released
        Assert.Equal(0, f.Cls.Slabs);
        Assert.True(f.Heap.AllPageblocksFree());
        Assert.Equal(0, f.Heap.GetStatistics().CommittedBytes);
        TestHeaps.AssertValid(f.Heap);
    }

    [Fact]
    public void AFreedSlotIsTheNextOneHandedOutFromItsSlab()
    {
        using var f = new Fixture();
        List<BlockHandle> slab = f.FillSlabs(1)[0];
        nint address = f.Heap.GetStablePointer(slab[3]);
        f.Heap.Free(slab[3]);
        BlockHandle again = f.Heap.Allocate(BlockSize, BlockKind.Unmovable);
        Assert.Equal(address, f.Heap.GetStablePointer(again));
        TestHeaps.AssertValid(f.Heap);
    }

    [Fact]
    public void EverySlotsReverseMapNamesItsHandle()
    {
        using var f = new Fixture();
        List<BlockHandle> slab = f.FillSlabs(1)[0];
        foreach (BlockHandle h in slab)
        {
            unsafe
            {
                int* word = f.Heap.Slabs[(int)BlockKind.Unmovable].ReverseMapWord(f.Heap.GetStablePointer(h), f.Class);
                Assert.Equal((int)HandleBits.Index(h.Value), *word);
            }
        }
    }
}
