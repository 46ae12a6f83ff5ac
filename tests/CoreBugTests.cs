using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>
/// Regression tests for core bugs found while writing the misuse and component tests: an overflow pin released twice,
/// an arena too large for int page indices, two live heaps sharing a tag, and migrating the only block of a class.
/// </summary>
public sealed class CoreBugTests
{
    [Fact]
    public void AnOverflowPinScopeDisposedTwiceNeverReleasesSomeoneElsesPin()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100), other = heap.Allocate(100);
        BlockPin longLived = heap.AcquirePin(h);
        Exception? secondRelease = null;
        PinNested(heap, other, PinRegistry.SlotsPerRecord, () =>
        {
            PinScope overflow = heap.Pin(h);      // every slot of the first record is taken: an overflow slot
            overflow.Dispose();
            try { overflow.Dispose(); } catch (Exception e) { secondRelease = e; }
        });
        Exception? free = Record.Exception(() => heap.Free(h));
        if (free == null) Record.Exception(longLived.Dispose);   // its pin was taken from it: this throws, nothing to undo
        else { longLived.Dispose(); heap.Free(h); }
        heap.Free(other);
        TestHeaps.AssertValid(heap);

        Assert.IsType<InvalidOperationException>(secondRelease);
        Assert.IsType<InvalidOperationException>(free);             // the BlockPin must still have held the block
    }

    private static void PinNested(NativeHeap heap, BlockHandle h, int depth, Action inside)
    {
        if (depth == 0) { inside(); return; }
        using PinScope pin = heap.Pin(h);
        PinNested(heap, h, depth - 1, inside);
    }

    [Fact]
    public void AnArenaTooLargeForItsPageDescriptorsIsRejectedAsABadOption()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { ArenaBytes = 1L << 46 }));
        Assert.Equal(nameof(HeapOptions.ArenaBytes), e.ParamName);
    }

    [Fact]
    public void TwoLiveHeapsNeverAcceptEachOthersHandles()
    {
        using NativeHeap a = TestHeaps.Small(caches: false);
        BlockHandle ha = a.Allocate(100);
        // Far more heaps than there are tags come and go while `a` lives: none may take a's tag.
        for (int i = 0; i < 600; i++)
        {
            using NativeHeap b = TestHeaps.Small(caches: false, arenaBytes: 1L << 20, pageblockPages: 16);
            BlockHandle hb = b.Allocate(100);
            Assert.NotEqual(HandleBits.Tag(ha.Value), HandleBits.Tag(hb.Value));
            Assert.Equal(InvalidHandleReason.Foreign, Assert.Throws<InvalidBlockHandleException>(() => b.Free(ha)).Reason);
            b.Free(hb);
        }
        a.Free(ha);
    }

    [Fact]
    public void MigratingTheOnlyBlockOfItsClassMovesItToAFreshSlab()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        Assert.Equal(MigrateResult.Success, heap.Migrate(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }
}
