using System.Buffers;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Interop;

namespace Compaction.Tests;

/// <summary>The pool's cache of returned buffers (<see cref="ArenaMemoryPoolOptions.CachedBuffers"/>): a kept block
/// serves the next rent through a new, live buffer object while the returned one stays dead; the trim gives back what
/// a period did not need, an idle period also releases the heap's free memory; Dispose frees every kept block.</summary>
public sealed class ArenaPoolCacheTests
{
    private static ArenaMemoryPool Pool(NativeHeap heap, ManualTimeProvider clock, int cached = 8, bool release = false) =>
        new(heap, new ArenaMemoryPoolOptions
        {
            LongTermPins = true, CachedBuffers = cached, CacheTrimPeriod = TimeSpan.FromSeconds(10),
            ReleaseFreeMemoryWhenIdle = release, TimeProvider = clock,
        });

    [Fact]
    public void AReturnedBlockServesTheNextRentThroughANewBuffer()
    {
        using NativeHeap heap = TestHeaps.Small();
        var clock = new ManualTimeProvider();
        using ArenaMemoryPool pool = Pool(heap, clock);
        IMemoryOwner<byte> first = pool.Rent(100);   // a rent up to the default size gets the default size
        Assert.Equal(4096, first.Memory.Length);
        Memory<byte> stale = first.Memory;
        first.Memory.Span.Fill(9);
        nint address;
        unsafe
        {
            using MemoryHandle h = first.Memory.Pin();
            address = (nint)h.Pointer;
        }
        first.Dispose();
        Assert.Equal(1, pool.CachedBuffers);
        Assert.Equal(0, pool.RentedBuffers);
        Assert.Equal(1, heap.GetStatistics().LiveBlocks);   // kept, not freed
        Assert.Equal(1, heap.GetStatistics().LongTermPins);

        IMemoryOwner<byte> second = pool.Rent();
        Assert.NotSame(first, second);
        Assert.Equal(0, pool.CachedBuffers);
        Assert.Equal(1, pool.RentedBuffers);
        unsafe
        {
            using MemoryHandle h = second.Memory.Pin();
            Assert.Equal(address, (nint)h.Pointer);   // the same block
        }
        Assert.All(second.Memory.ToArray(), x => Assert.Equal(9, x));
        // The returned buffer stays dead although its block lives on in another rent.
        Assert.Throws<ObjectDisposedException>(() => stale.Span.Length);
        Assert.Throws<ObjectDisposedException>(() => first.Memory);
        Assert.Throws<InvalidOperationException>(first.Dispose);
        Assert.Equal(1, pool.RentedBuffers);
        second.Dispose();
        Assert.Equal(1, pool.CachedBuffers);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void OnlyDefaultSizeBuffersAreKeptAndTheLimitHolds()
    {
        using NativeHeap heap = TestHeaps.Small();
        var clock = new ManualTimeProvider();
        using ArenaMemoryPool pool = Pool(heap, clock, cached: 3);
        pool.Rent(10_000).Dispose();   // larger than the default: freed at its return
        Assert.Equal(0, pool.CachedBuffers);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        var rents = Enumerable.Range(0, 5).Select(_ => pool.Rent()).ToList();
        foreach (IMemoryOwner<byte> r in rents) r.Dispose();
        Assert.Equal(3, pool.CachedBuffers);
        Assert.Equal(3, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void TheTrimGivesBackWhatAPeriodDidNotNeed()
    {
        using NativeHeap heap = TestHeaps.Small();
        var clock = new ManualTimeProvider();
        using ArenaMemoryPool pool = Pool(heap, clock);
        var rents = Enumerable.Range(0, 6).Select(_ => pool.Rent()).ToList();
        foreach (IMemoryOwner<byte> r in rents) r.Dispose();
        Assert.Equal(6, pool.CachedBuffers);
        clock.Advance(TimeSpan.FromSeconds(10));   // the first period: a rent missed the empty cache, nothing was unneeded
        Assert.Equal(6, pool.CachedBuffers);
        // The next period needs two buffers at once: four sit unused through it.
        for (int i = 0; i < 3; i++)
        {
            IMemoryOwner<byte> a = pool.Rent(), b = pool.Rent();
            a.Dispose();
            b.Dispose();
        }
        clock.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(2, pool.CachedBuffers);
        Assert.Equal(2, heap.GetStatistics().LiveBlocks);
        clock.Advance(TimeSpan.FromSeconds(10));   // a period without rents: the rest goes
        Assert.Equal(0, pool.CachedBuffers);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AnIdlePeriodReleasesTheHeapsFreeMemoryOnce()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        var clock = new ManualTimeProvider();
        using ArenaMemoryPool pool = Pool(heap, clock, cached: 64, release: true);
        var rents = Enumerable.Range(0, 64).Select(_ => pool.Rent(64 * 1024)).ToList();   // not kept: freed at return
        foreach (IMemoryOwner<byte> r in rents) r.Dispose();
        long committed = heap.GetStatistics().CommittedBytes;
        Assert.True(committed >= 4L << 20, $"{committed} bytes committed for 4 MiB of rents");
        clock.Advance(TimeSpan.FromSeconds(10));   // the period had rents: nothing released
        Assert.Equal(committed, heap.GetStatistics().CommittedBytes);
        clock.Advance(TimeSpan.FromSeconds(10));   // idle
        HeapStatistics idle = heap.GetStatistics();
        Assert.True(idle.CommittedBytes < committed, $"{idle.CommittedBytes} bytes committed after the idle release, {committed} before");
        long released = idle.DecommittedBytes + idle.PurgedBytes;
        Assert.True(released > 0);
        clock.Advance(TimeSpan.FromSeconds(30));   // still idle: once per idle spell
        HeapStatistics later = heap.GetStatistics();
        Assert.Equal(released, later.DecommittedBytes + later.PurgedBytes);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void DisposeFreesTheKeptBlocksAndLaterReturnsAreFreed()
    {
        using NativeHeap heap = TestHeaps.Small();
        var clock = new ManualTimeProvider();
        var pool = Pool(heap, clock);
        IMemoryOwner<byte> held = pool.Rent();
        pool.Rent().Dispose();
        pool.Rent(1).Dispose();
        Assert.Equal(1, pool.CachedBuffers);
        pool.Dispose();
        Assert.Equal(0, pool.CachedBuffers);
        Assert.Equal(1, heap.GetStatistics().LiveBlocks);   // the one still rented
        Assert.Throws<ObjectDisposedException>(() => pool.Rent());
        held.Dispose();   // returned after Dispose: freed, not kept
        Assert.Equal(0, pool.CachedBuffers);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        clock.Advance(TimeSpan.FromSeconds(60));   // the trim timer was stopped: nothing fires on a disposed pool
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ReturnsAndRentsFromManyThreadsKeepTheCountsExact()
    {
        using NativeHeap heap = TestHeaps.Small();
        var clock = new ManualTimeProvider();
        using ArenaMemoryPool pool = Pool(heap, clock, cached: 16);
        Parallel.For(0, 4, _ =>
        {
            var mine = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 2000; i++)
            {
                mine.Add(pool.Rent(i % 3 == 0 ? 8192 : 4096));
                mine[^1].Memory.Span[0] = (byte)i;
                if (mine.Count > 5)
                {
                    mine[0].Dispose();
                    mine.RemoveAt(0);
                }
            }
            foreach (IMemoryOwner<byte> r in mine) r.Dispose();
        });
        Assert.Equal(0, pool.RentedBuffers);
        Assert.Equal(0, pool.RentedBytes);
        Assert.Equal(pool.CachedBuffers, heap.GetStatistics().LiveBlocks);
        Assert.InRange(pool.CachedBuffers, 1, 16 + 4);   // racing returns may overshoot by one each
        pool.Dispose();
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
    }
}
