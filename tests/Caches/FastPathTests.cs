using System.Collections.Concurrent;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>
/// The fast paths (native-layout.md, "Fast paths"): entries bound to their storage in thread caches and the depot,
/// the thread-bound <see cref="HeapContext"/>, sizes kept in the state word, cached runs, cross-thread frees, and the
/// pooled <see cref="BlockPin"/>. Every guarantee the heap's own methods give holds on them.
/// </summary>
public sealed unsafe class FastPathTests
{
    [Fact]
    public void AContextAllocatesFreesAndPinsLikeTheHeapAndBothMix()
    {
        using NativeHeap heap = TestHeaps.Small();
        HeapContext ctx = heap.GetThreadContext();
        Assert.Same(heap, ctx.Heap);
        var blocks = new List<BlockHandle>();
        for (int i = 1; i <= 3000; i += 7)
        {
            BlockHandle h = i % 2 == 0 ? ctx.Allocate(i) : heap.Allocate(i, BlockKind.Unmovable);
            using (PinScope pin = ctx.Pin(h)) pin.Span.Fill((byte)i);
            blocks.Add(h);
        }
        TestHeaps.AssertValid(heap);
        for (int k = 0; k < blocks.Count; k++)
        {
            BlockHandle h = blocks[k];
            int size = 1 + 7 * k;
            Assert.Equal(size, heap.GetSize(h));
            using (PinScope pin = heap.Pin(h)) Assert.True(pin.Span.IndexOfAnyExcept((byte)size) < 0);
            if (k % 2 == 0) ctx.Free(h); else heap.Free(h);
            Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Free(h));   // a double free
        }
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ADefaultContextAndAContextOfADisposedHeapThrowClearly()
    {
        Assert.Throws<InvalidOperationException>(() => default(HeapContext).Allocate(16));
        Assert.Throws<InvalidOperationException>(() => default(HeapContext).Free(default));
        Assert.Throws<InvalidOperationException>(() => _ = default(HeapContext).Heap);
        NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(32);
        heap.Dispose();
        Assert.Throws<ObjectDisposedException>(() => heap.GetThreadContext());
    }

    [Fact]
    public void AContextRejectsForgedStaleAndForeignHandlesAndPinnedFrees()
    {
        using NativeHeap heap = TestHeaps.Small();
        using NativeHeap other = TestHeaps.Small();
        BlockHandle mine = heap.Allocate(64), theirs = other.Allocate(64);
        // A context is a ref struct, which a lambda cannot capture: each assertion takes its own.
        Assert.Equal(InvalidHandleReason.Foreign, Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Free(theirs)).Reason);
        Assert.Equal(InvalidHandleReason.Null, Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Pin(default)).Reason);
        Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Free(new BlockHandle(mine.Value + (1UL << 32))));   // a later generation
        HeapContext ctx = heap.GetThreadContext();
        using (PinScope pin = ctx.Pin(mine))
        {
            Assert.Throws<InvalidOperationException>(() => heap.GetThreadContext().Free(mine));
            Assert.Throws<InvalidOperationException>(() => heap.Free(mine));
        }
        ctx.Free(mine);
        Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Pin(mine)).Reason);
        other.Free(theirs);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void FreeingABlockPinnedByTheNinthScopeOfThisThreadIsRefused()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle[] h = Enumerable.Range(0, 12).Select(_ => heap.Allocate(48)).ToArray();
        using PinScope p0 = heap.Pin(h[0]), p1 = heap.Pin(h[1]), p2 = heap.Pin(h[2]), p3 = heap.Pin(h[3]),
            p4 = heap.Pin(h[4]), p5 = heap.Pin(h[5]), p6 = heap.Pin(h[6]), p7 = heap.Pin(h[7]), p8 = heap.Pin(h[8]);
        Assert.Throws<InvalidOperationException>(() => heap.Free(h[8]));   // held in an overflow record
        Assert.Throws<InvalidOperationException>(() => heap.GetThreadContext().Free(h[0]));
        heap.Free(h[11]);
        Assert.True(heap.IsLive(h[8]));
    }

    [Theory]
    [InlineData(4096)]
    [InlineData(65536)]
    public void EverySizeIsReportedExactlyAcrossClassPageAndSizeBitBoundaries(int pageSize)
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20, PageSize = pageSize, PageblockPages = 64 });
        long threshold = heap.Options.SlabThreshold;
        var sizes = new List<long> { 1, 15, 16, 17, 127, 128, 129, threshold - 1, threshold, threshold + 1,
            pageSize - 1, pageSize, pageSize + 1, 65535, 65536, 65537, 3L * pageSize + 5, (1L << 20) - 1, 1L << 20, (1L << 20) + 1, 5_000_001 };
        foreach (long size in sizes)
            foreach (BlockKind kind in new[] { BlockKind.Movable, BlockKind.Unmovable })
            {
                BlockHandle h = heap.Allocate(size, kind);
                Assert.Equal(size, heap.GetSize(h));
                using (PinScope pin = heap.Pin(h)) Assert.Equal(size, pin.Length);
                using (BlockPin pin = heap.AcquirePin(h)) Assert.Equal(size, pin.Length);
                heap.Free(h);
                BlockHandle again = heap.Allocate(size, kind);   // a cached slot or run, rebound
                Assert.Equal(size, heap.GetSize(again));
                heap.Free(again);
            }
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AFreedRunIsCachedBoundAndReusedAndADrainGivesItBack()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, arenaBytes: 64L << 20);
        BlockHandle a = heap.Allocate(40_000);
        nint address = heap.CurrentAddress(a);
        heap.Free(a);
        Assert.Equal(1, heap.GetStatistics().CachedRuns);
        TestHeaps.AssertValid(heap);   // the cached run's head still names its entry
        BlockHandle b = heap.Allocate(39_000);   // same page count: the cached run
        Assert.Equal(address, heap.CurrentAddress(b));
        Assert.Equal(39_000, heap.GetSize(b));
        heap.Free(b);
        heap.DrainThreadCaches();
        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(0, stats.CachedRuns);
        Assert.Equal(0, stats.CachedSlots);
        Assert.True(heap.AllPageblocksFree());
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void CompactionDrainsTheCachesAndTheDepotOfBoundEntriesAndMovesTheLiveBlocks()
    {
        // No soft limit: its room search would drain the caches while the runs below are allocated, and this test needs
        // them full when Compact() starts.
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 90, WasteHighRatio = 0 });
        var rng = new Random(7);
        var live = new List<BlockHandle>();
        for (int i = 0; i < 20_000; i++) live.Add(heap.Allocate(rng.Next(16, 600)));
        for (int i = 0; i < live.Count; i += 2) heap.Free(live[i]);           // fragment; this thread's bins overflow into the depot
        live = live.Where((_, i) => i % 2 == 1).ToList();
        var runs = Enumerable.Range(0, 50).Select(_ => heap.Allocate(rng.Next(20_000, 200_000))).ToList();
        runs.ForEach(heap.Free);                                               // cached runs
        Assert.True(heap.GetStatistics().CachedSlots > 0);
        Assert.True(heap.GetStatistics().CachedRuns > 0);
        foreach (BlockHandle h in live) TestHeaps.Fill(heap, h);
        CompactionStatistics run = heap.Compact();
        Assert.True(run.PgmigrateSuccess > 0);
        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(0, stats.CachedSlots);                                    // drained before migrating
        Assert.Equal(0, stats.CachedRuns);
        Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        TestHeaps.AssertValid(heap);
        live.ForEach(heap.Free);
    }

    [Fact]
    public void BlocksFreedOnAnotherThreadGoBackThroughTheDepotWithEveryByteIntact()
    {
        using NativeHeap heap = TestHeaps.Small(arenaBytes: 128L << 20);
        var queue = new BlockingCollection<BlockHandle>(boundedCapacity: 4096);
        const int count = 200_000;
        long corrupt = 0;
        var consumer = new Thread(() =>
        {
            HeapContext ctx = heap.GetThreadContext();
            foreach (BlockHandle h in queue.GetConsumingEnumerable())
            {
                if (TestHeaps.CountCorrupt(heap, h) != 0) Interlocked.Increment(ref corrupt);
                ctx.Free(h);
            }
        });
        consumer.Start();
        var rng = new Random(11);
        HeapContext producer = heap.GetThreadContext();
        for (int i = 0; i < count; i++)
        {
            BlockHandle h = producer.Allocate(rng.Next(1, 1024));
            TestHeaps.Fill(heap, h);
            queue.Add(h);
        }
        queue.CompleteAdding();
        consumer.Join();
        Assert.Equal(0, corrupt);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        Assert.Equal(0, heap.GetStatistics().LiveBytes);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }

    [Fact]
    public void AThreadThatDiesWithCachedEntriesLeavesNothingBehind()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle kept = default;
        var t = new Thread(() =>
        {
            var mine = Enumerable.Range(0, 3000).Select(i => heap.Allocate(16 + i % 300)).ToList();
            mine.Add(heap.Allocate(70_000));
            kept = mine[5];
            foreach (BlockHandle h in mine) if (h != kept) heap.Free(h);
        });
        t.Start();
        t.Join();
        Assert.True(heap.GetStatistics().CachedSlots > 0);
        heap.Allocate(16);   // a new cache registers and prunes the dead thread's
        TestHeaps.AssertValid(heap);
        heap.Free(kept);
        Assert.Equal(1, heap.GetStatistics().LiveBlocks);
    }

    [Fact]
    public void ABlockPinIsAPooledStructADoubleDisposeOfAnyCopyIsANoOpAndAStaleCopyNeverReleasesALaterPin()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100);
        BlockPin first = heap.AcquirePin(h);
        BlockPin copy = first;
        first.Dispose();
        Assert.False(copy.IsHeld);
        Assert.Throws<ObjectDisposedException>(() => copy.Address);
        BlockPin second = heap.AcquirePin(h);   // may reuse first's record
        copy.Dispose();
        first.Dispose();
        Assert.True(second.IsHeld);
        Assert.Throws<InvalidOperationException>(() => heap.Free(h));   // still pinned by second
        second.Dispose();
        default(BlockPin).Dispose();
        Assert.False(default(BlockPin).IsHeld);
        heap.Free(h);
    }

    [Fact]
    public void AtomicPinsStopAtTheirMaximumWithAClearError()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(64);
        var pins = new List<BlockPin>();
        for (int i = 0; i < 1023; i++) pins.Add(heap.AcquirePin(h));
        Assert.Throws<InvalidOperationException>(() => heap.AcquirePin(h));
        pins.ForEach(p => p.Dispose());
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AContextWorksOnAHeapWithoutThreadCaches()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        HeapContext ctx = heap.GetThreadContext();
        var blocks = new List<BlockHandle>();
        for (int i = 1; i <= 500; i++) blocks.Add(ctx.Allocate(i * 37));
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        Assert.Equal(0, heap.GetStatistics().CachedSlots);
        Assert.All(blocks, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        foreach (BlockHandle h in blocks) ctx.Free(h);
        TestHeaps.AssertValid(heap);
    }
}
