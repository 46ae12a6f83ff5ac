using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>The ends of the ArenaBytes range: every size the options accept builds a heap (or is refused with the
/// documented exceptions, leaving nothing behind), and the smallest arena serves both kinds of block.</summary>
[Collection(ProcessWideResources.Name)]
public sealed class ArenaLimitsTests(ITestOutputHelper output)
{
    /// <summary>The largest ArenaBytes that option validation accepts for these options (validation is monotone
    /// above the minimum: a binary search over it).</summary>
    private static long LargestAcceptedArenaBytes(HeapOptions options)
    {
        bool Accepted(long bytes)
        {
            options.ArenaBytes = bytes;
            try { options.Validate(); return true; }
            catch (ArgumentException) { return false; }
        }
        long lo = 2L * options.PageSize * options.PageblockPages, hi = long.MaxValue;   // lo accepted, hi refused
        Assert.True(Accepted(lo) && !Accepted(hi));
        while (hi - lo > 1)
        {
            long mid = lo + (hi - lo) / 2;
            if (Accepted(mid)) lo = mid; else hi = mid;
        }
        return lo;
    }

    [Fact]
    public void TheLargestArenaTheOptionsAcceptIsBuiltOrRefusedWithArgumentOrOutOfMemoryAndLeavesNothingBehind()
    {
        var options = new HeapOptions();
        long max = LargestAcceptedArenaBytes(options);
        options.ArenaBytes = max;
        output.WriteLine($"largest accepted ArenaBytes with {options.PageSize} B pages and {options.PageblockPages}-page pageblocks: {max:N0} ({max / options.PageSize:N0} pages)");
        int mapsBefore = OperatingSystem.IsLinux() ? ProcSelf.MapCount() : 0;
        string outcome = "";
        // Refusals repeat: a refused heap must not keep its reservation (or anything else) until a finalizer runs.
        for (int attempt = 0; attempt < 100; attempt++)
        {
            Exception? e = Record.Exception(() =>
            {
                using var heap = new NativeHeap(options);
                BlockHandle h = heap.Allocate(100);
                TestHeaps.Fill(heap, h);
                Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
                heap.Free(h);
            });
            outcome = e == null ? "built" : $"{e.GetType().Name}: {e.Message}";
            Assert.True(e is null or OutOfMemoryException or ArgumentException { ParamName: nameof(HeapOptions.ArenaBytes) },
                $"new NativeHeap(ArenaBytes = {max}) threw {e}");
            if (e == null) break;
        }
        output.WriteLine(outcome);
        if (OperatingSystem.IsLinux())
            Assert.True(ProcSelf.MapCount() < mapsBefore + 50, $"mappings {mapsBefore} -> {ProcSelf.MapCount()}: refused heaps kept their reservations");
        using NativeHeap after = TestHeaps.Small();
        BlockHandle ok = after.Allocate(100);
        after.Free(ok);
        TestHeaps.AssertValid(after);
    }

    /// <summary>Whatever the geometry, the largest accepted arena is whole max-order blocks of at most int.MaxValue
    /// pages with a max-order block of headroom below 2^31 (so page + (1 &lt;&lt; order) never overflows), and its
    /// zone split is computed without overflow (2^26 blocks of 16-page pageblocks times a percentage exceed an int).</summary>
    [Theory]
    [InlineData(4096, 16)]
    [InlineData(4096, 512)]
    [InlineData(4096, 1024)]
    [InlineData(65536, 16)]
    [InlineData(65536, 1024)]
    public void TheLargestAcceptedArenaHasPageIndicesThatFitAnIntAndAZoneSplitThatDoesNotOverflow(int pageSize, int pageblockPages)
    {
        var options = new HeapOptions { PageSize = pageSize, PageblockPages = pageblockPages };
        long max = LargestAcceptedArenaBytes(options);
        long blockPages = 2L * pageblockPages;
        Assert.Equal(0, max % (blockPages * pageSize));
        long pages = max / pageSize;
        Assert.True(pages + blockPages <= 1L << 31, $"{pages} pages leave no max-order block of headroom below 2^31");
        int blocks = (int)(pages / blockPages);
        foreach (int percent in new[] { 0, 1, 50, 75, 99, 100 })
        {
            int movable = PageAllocator.MovableBlocks(blocks, percent);
            Assert.InRange(movable, 0, blocks);
            Assert.InRange(movable, (long)blocks * percent / 100 - 1, (long)blocks * percent / 100 + 1);
        }
    }

    [Fact]
    public void AnArenaTooLargeForItsPageDescriptorsIsRejectedAsABadOption()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { ArenaBytes = 1L << 46 }));
        Assert.Equal(nameof(HeapOptions.ArenaBytes), e.ParamName);
    }

    /// <summary>With the default 75% movable split an arena of a few pageblocks still has room for unmovable blocks
    /// (the split must leave the normal zone at least one max-order block whenever it is below 100%).</summary>
    [Theory]
    [InlineData(16, 2)]
    [InlineData(16, 4)]
    [InlineData(16, 6)]
    [InlineData(512, 2)]
    public void ASmallArenaWithTheDefaultZoneSplitServesUnmovableAndMovableBlocks(int pageblockPages, int pageblocks)
    {
        using var heap = new NativeHeap(new HeapOptions { PageblockPages = pageblockPages, ArenaBytes = (long)pageblocks * pageblockPages * 4096 });
        Assert.Equal(75, heap.Options.MovableZonePercent);
        Assert.True(heap.TryAllocate(100, BlockKind.Unmovable, out BlockHandle unmovable), $"a {pageblocks}-pageblock arena refused a 100-byte unmovable block");
        BlockHandle movable = heap.Allocate(100);
        TestHeaps.Fill(heap, unmovable);
        TestHeaps.Fill(heap, movable);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, unmovable));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, movable));
        heap.Free(unmovable);
        heap.Free(movable);
        TestHeaps.AssertValid(heap);
    }
}
