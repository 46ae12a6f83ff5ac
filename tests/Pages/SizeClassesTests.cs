using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

public sealed class SizeClassesTests(ITestOutputHelper output)
{
    public static TheoryData<int, int> Geometries => new()
    {
        { 16 * 1024, 4096 },   // the defaults
        { 1024, 4096 },
        { 32 * 1024, 4096 },
        { 16 * 1024, 16384 },
        { 32 * 1024, 65536 },
        { 3072, 8192 },        // a threshold that is not a power of two
    };

    [Theory]
    [MemberData(nameof(Geometries))]
    public void ClassesAreSixteenBytesApartUpTo1KiBAndAtMostAThirtySecondApartAbove(int threshold, int pageSize)
    {
        var classes = new SizeClasses(threshold, pageSize);
        int[] size = classes.Size;
        Assert.Equal(16, size[0]);
        Assert.Equal(threshold, size[^1]);
        for (int c = 1; c < size.Length; c++)
        {
            Assert.True(size[c] > size[c - 1], $"classes {c - 1} and {c} are not increasing");
            Assert.True(size[c] % 16 == 0, $"class {size[c]} is not a multiple of 16 B, so its slots are not 16 B aligned");
            if (size[c] <= 1024) Assert.Equal(16, size[c] - size[c - 1]);
            else Assert.True(size[c] - size[c - 1] <= size[c - 1] / 32, $"{size[c - 1]} -> {size[c]} is more than 3.125% apart");
        }
        Assert.True(size.Length <= byte.MaxValue + 1, "a class index fits the byte of the class table");
        Assert.Equal(Enumerable.Range(1, 16).Select(i => i * 16), size.Take(16));
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void EverySizeUpToTheThresholdMapsToTheSmallestClassThatFits(int threshold, int pageSize)
    {
        var classes = new SizeClasses(threshold, pageSize);
        for (int s = 1; s <= threshold; s++)
        {
            int c = classes.ClassOf(s);
            if (classes.Size[c] < s) Assert.Fail($"size {s} maps to class {classes.Size[c]}, which is too small");
            if (c > 0 && classes.Size[c - 1] >= s) Assert.Fail($"size {s} maps to class {classes.Size[c]}, but {classes.Size[c - 1]} fits");
        }
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void SlotOfAgreesWithDivisionForEveryByteOfEverySlotOfEveryClass(int threshold, int pageSize)
    {
        var classes = new SizeClasses(threshold, pageSize);
        for (int c = 0; c < classes.Count; c++)
        {
            int size = classes.Size[c], end = classes.SlotsPerSlab[c] * size;
            for (int offset = 0; offset < end; offset++)
            {
                if (classes.SlotOf(c, offset) != offset / size)
                    Assert.Fail($"class {size}: SlotOf({offset}) = {classes.SlotOf(c, offset)}, expected {offset / size}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void SlabsHoldTheirSlotsAndReverseMapAndWasteLittle(int threshold, int pageSize)
    {
        var classes = new SizeClasses(threshold, pageSize);
        double worst = 0;
        for (int c = 0; c < classes.Count; c++)
        {
            int size = classes.Size[c], pages = classes.PagesPerSlab[c], slots = classes.SlotsPerSlab[c];
            long bytes = (long)pages * pageSize;
            Assert.InRange(pages, 1, 16);
            Assert.InRange(slots, 1, ushort.MaxValue);          // Bump and the slot indices are 16-bit
            // The reverse map (one int per slot) sits after the last slot and ends at the end of the slab.
            Assert.True(classes.ReverseMapOffset[c] >= slots * size, $"class {size}: reverse map overlaps the slots");
            Assert.Equal(bytes, classes.ReverseMapOffset[c] + slots * SizeClasses.ReverseMapBytesPerSlot);
            Assert.Equal(0, classes.ReverseMapOffset[c] % sizeof(int));
            // No slab length up to 16 pages would hold a further slot in the same pages.
            Assert.True(bytes - (long)slots * (size + SizeClasses.ReverseMapBytesPerSlot) < size + SizeClasses.ReverseMapBytesPerSlot);
            double waste = (bytes - (long)slots * size) / (double)bytes;  // reverse map included
            worst = Math.Max(worst, waste);
            // Small classes waste little more than their reverse map (4 B per slot); large ones at most 1/8 of a slab.
            double allowed = Math.Max(SizeClasses.ReverseMapBytesPerSlot / (double)(size + SizeClasses.ReverseMapBytesPerSlot) + 0.02, 0.125);
            Assert.True(waste <= allowed, $"class {size}: {pages} pages x {slots} slots waste {waste:P1} (allowed {allowed:P1})");
        }
        output.WriteLine($"threshold {threshold}, page {pageSize}: {classes.Count} classes, worst waste {worst:P2}");
    }

    [Theory]
    [InlineData(1025)]
    [InlineData(1100)]
    [InlineData(16_383)]
    public void AThresholdThatIsNotAMultipleOfSixteenStillMapsEverySizeToAnAlignedClass(int threshold)
    {
        // HeapOptions accepts any SlabThreshold from 1024 to 32768. (The first core indexed past its class table
        // here: ClassOf(threshold) threw IndexOutOfRangeException, and the last class was not 16 B aligned.)
        var classes = new SizeClasses(threshold, 4096);
        for (int s = 1; s <= threshold; s++) Assert.True(classes.Size[classes.ClassOf(s)] >= s);
        Assert.All(classes.Size, size => Assert.Equal(0, size % 16));
    }

    [Theory]
    [InlineData(1025)]
    [InlineData(16_383)]
    public void AHeapWithAnUnalignedSlabThresholdServesAlignedBlocksUpToIt(int threshold)
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 8L << 20, PageblockPages = 64, SlabThreshold = threshold });
        for (long size = threshold - 20; size <= threshold + 20; size++)
        {
            BlockHandle h = heap.Allocate(size, BlockKind.Unmovable);
            Assert.Equal(0, heap.GetStablePointer(h) % 16);
            TestHeaps.Fill(heap, h);
            Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
            heap.Free(h);
        }
        TestHeaps.AssertValid(heap);
    }
}
