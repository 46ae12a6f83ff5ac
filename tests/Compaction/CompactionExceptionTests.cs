using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>
/// Exceptions inside a compaction pass at the points where the compactor holds destinations it has taken but not yet
/// handed to a batch: whatever throws, every page taken goes back (the validator finds no page off both the free lists
/// and the blocks), and a later compaction works.
/// </summary>
public sealed class CompactionExceptionTests
{
    private static HeapOptions Options() => new()
    {
        ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 50,
    };

    /// <summary>An exception while a cluster's second run looks for its destination (the free scanner's pool failing
    /// to grow, say): the first run's destination, already taken from the pool and named by its descriptors, must go
    /// back with the rest of the pool.</summary>
    [Fact]
    public void AnExceptionWhileAClusterFindsItsNextDestinationStrandsNoPage()
    {
        using var heap = new NativeHeap(Options());
        // 5-page runs, every other one freed: clusters of several runs, holes to compact into.
        var blocks = Enumerable.Range(0, 800).Select(_ => heap.Allocate(20_000)).ToList();
        var kept = blocks.Where((_, i) => i % 2 == 1).ToList();
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);
        foreach (BlockHandle h in kept) TestHeaps.Fill(heap, h);

        int wanted = 0;
        heap.Compactor!.RunDestinationWanted = () =>
        {
            if (Interlocked.Increment(ref wanted) == 2) throw new InvalidOperationException("injected fault before a destination is taken");
        };
        Assert.Throws<InvalidOperationException>(() => heap.Compact());
        heap.Compactor.RunDestinationWanted = null;
        Assert.False(heap.ThreadCachesDisabled);
        TestHeaps.AssertValid(heap);
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));

        Assert.True(heap.Compact().BytesMoved > 0);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }
}

/// <summary>The validator's check that every run is named by a live or cached entry: pages a pass strands (taken,
/// named by descriptors, then forgotten) would otherwise pass it.</summary>
public sealed unsafe class LostRunValidatorTests
{
    [Fact]
    public void ARunNoEntryNamesIsReportedAsLostPages()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(20_000);   // a 5-page run
        TestHeaps.AssertValid(heap);
        HandleEntry* e = heap.Locate(h);
        long live = e->State;
        // The entry forgets its run, as a leak would leave it: free, bound to nothing, in no cache.
        e->State = (live & EntryState.GenerationMask) + EntryState.GenerationOne;
        List<string> problems = heap.Validate();
        e->State = live;   // put back, so the heap frees and disposes as usual
        Assert.Contains(problems, p => p.Contains("named by no live or cached entry"));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }
}
