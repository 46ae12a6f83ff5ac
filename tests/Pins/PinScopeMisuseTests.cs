using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>An unbalanced unpin (a <see cref="PinScope"/>, or a copy of it, disposed after its pin was released) is
/// detected and never releases a pin someone else holds, wherever that pin lives.</summary>
public sealed class PinScopeMisuseTests
{
    /// <summary>More scopes than a thread's first pin record holds, so the next one lives in an overflow record.</summary>
    private const int MorePinsThanARecordHolds = 64;

    private static NativeHeap MovableOnly() => new(new HeapOptions
    {
        ArenaBytes = 8L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false,
    });

    [Fact]
    public void DisposingACopyOfAReleasedScopeAfterTwoToThe16MorePinsThrowsAndTheLivePinStillHoldsTheBlock()
    {
        using NativeHeap heap = MovableOnly();
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);

        PinScope first = heap.Pin(h);
        PinScope copy = first;
        first.Dispose();
        // The same slot is reused by every later pin of this thread; the 2^16-th one after `first` is `live`.
        for (int i = 1; i < 1 << 16; i++) heap.Pin(h).Dispose();
        PinScope live = heap.Pin(h);
        nint pinnedAt = live.Address;

        Exception? unbalanced = null, liveRelease = null;
        try { copy.Dispose(); } catch (Exception e) { unbalanced = e; }
        // While `live` holds it, the block may neither move nor be freed.
        heap.Compact();
        nint addressAfterCompaction;
        using (PinScope again = heap.Pin(h)) addressAfterCompaction = again.Address;
        Exception? free = Record.Exception(() => heap.Free(h));
        try { live.Dispose(); } catch (Exception e) { liveRelease = e; }

        Assert.True(unbalanced is InvalidOperationException, $"disposing the stale copy threw {unbalanced?.GetType().Name ?? "nothing"}: it released the live pin");
        Assert.True(pinnedAt == addressAfterCompaction, $"the compactor moved a pinned block from 0x{pinnedAt:x} to 0x{addressAfterCompaction:x}");
        Assert.True(free is InvalidOperationException, $"Free of a pinned block threw {free?.GetType().Name ?? "nothing"}");
        Assert.Null(liveRelease);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AnOverflowScopeReleasedTwiceNeverReleasesThePinThatReusedItsSlot()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100), other = heap.Allocate(100);
        Exception? secondRelease = null, freeWhilePinned = null, reuseRelease = null;
        PinNested(heap, other, MorePinsThanARecordHolds, () =>
        {
            PinScope overflow = heap.Pin(h);      // every slot of the first record is taken: a slot of an overflow record
            overflow.Dispose();
            PinScope reuse = heap.Pin(h);         // the first free slot again: the one `overflow` had
            try { overflow.Dispose(); } catch (Exception e) { secondRelease = e; }
            freeWhilePinned = Record.Exception(() => heap.Free(h));
            try { reuse.Dispose(); } catch (Exception e) { reuseRelease = e; }
        });

        Assert.True(secondRelease is InvalidOperationException, $"the second release threw {secondRelease?.GetType().Name ?? "nothing"}");
        Assert.True(freeWhilePinned is InvalidOperationException, $"Free while `reuse` pins the block threw {freeWhilePinned?.GetType().Name ?? "nothing"}: its pin was released by the stale scope");
        Assert.Null(reuseRelease);
        heap.Free(h);
        heap.Free(other);
        TestHeaps.AssertValid(heap);
    }

    private static void PinNested(NativeHeap heap, BlockHandle h, int depth, Action inside)
    {
        if (depth == 0) { inside(); return; }
        using PinScope pin = heap.Pin(h);
        PinNested(heap, h, depth - 1, inside);
    }
}
