using System.Buffers;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Interop;

namespace Compaction.Tests;

/// <summary>The pool's contract: pinned rents, dead returned buffers, returns that are never double frees.</summary>
public sealed class ArenaMemoryPoolTests
{
    [Fact]
    public void RentsArePinnedBuffersOfTheAskedSize()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap);
        using (IMemoryOwner<byte> d = pool.Rent()) Assert.Equal(4096, d.Memory.Length);
        using (IMemoryOwner<byte> one = pool.Rent(0)) Assert.Equal(1, one.Memory.Length);
        IMemoryOwner<byte> b = pool.Rent(100_000);
        Assert.Equal(100_000, b.Memory.Length);
        Assert.Equal(1, pool.RentedBuffers);
        Assert.Equal(100_000, pool.RentedBytes);
        b.Memory.Span.Fill(7);
        unsafe
        {
            using MemoryHandle mh = b.Memory.Pin();
            fixed (byte* s = b.Memory.Span) Assert.Equal((nint)s, (nint)mh.Pointer);
            heap.Compact();   // a short-term rent is a pinned movable block: it stays
            fixed (byte* s = b.Memory.Span) Assert.Equal((nint)s, (nint)mh.Pointer);
        }
        Assert.All(b.Memory.ToArray(), x => Assert.Equal(7, x));
        b.Dispose();
        Assert.Equal(0, pool.RentedBuffers);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(-2));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(pool.MaxBufferSize + 1 > 0 ? pool.MaxBufferSize + 1 : -5));
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AReturnedBufferIsDeadAndReturningItTwiceIsAnError()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap);
        IMemoryOwner<byte> b = pool.Rent(64);
        Memory<byte> kept = b.Memory;
        b.Dispose();
        Assert.Throws<ObjectDisposedException>(() => b.Memory);
        Assert.Throws<ObjectDisposedException>(() => kept.Span.Length);
        Assert.Throws<ObjectDisposedException>(() => kept.Pin());
        Assert.Throws<InvalidOperationException>(b.Dispose);
        Assert.Equal(0, pool.RentedBuffers);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ABufferNativeCodeStillHoldsIsFreedWithItsLastHandle()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap);
        IMemoryOwner<byte> b = pool.Rent(256);
        MemoryHandle first = b.Memory.Pin(), second = b.Memory.Slice(10).Pin();
        long live = heap.GetStatistics().LiveBlocks;
        b.Dispose();                                            // returned while the OS still has it
        Assert.Equal(live, heap.GetStatistics().LiveBlocks);
        Assert.Equal(1, pool.RentedBuffers);
        first.Dispose();
        Assert.Equal(live, heap.GetStatistics().LiveBlocks);
        second.Dispose();                                       // the last handle frees it
        Assert.Equal(live - 1, heap.GetStatistics().LiveBlocks);
        Assert.Equal(0, pool.RentedBuffers);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void LongTermRentsLiveInUnmovableMemoryOutsideTheMovableZone()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        var rents = Enumerable.Range(0, 50).Select(i => pool.Rent(i * 997 + 1)).ToList();
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(50, s.LongTermPins);
        Assert.Equal(0, s.LongTermPinMigrations);   // allocated unmovable: nothing to move
        unsafe
        {
            foreach (IMemoryOwner<byte> r in rents)
                fixed (byte* p = r.Memory.Span) Assert.False(heap.Movable!.Contains(heap.Map.PageOf((nint)p)));
        }
        TestHeaps.AssertValid(heap);
        rents.ForEach(r => r.Dispose());
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
    }

    [Fact]
    public void ADisposedPoolRentsNothingAndItsBuffersStayValid()
    {
        using NativeHeap heap = TestHeaps.Small();
        var pool = new ArenaMemoryPool(heap);
        IMemoryOwner<byte> b = pool.Rent(32);
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.Rent());
        b.Memory.Span.Fill(1);
        b.Dispose();
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
    }

    [Fact]
    public void BadOptionsAreRefused()
    {
        using NativeHeap heap = TestHeaps.Small();
        Assert.Throws<ArgumentNullException>(() => new ArenaMemoryPool(null!));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { DefaultBufferSize = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { MaxBufferSize = -1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { MaxBufferSize = 100, DefaultBufferSize = 200 }));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReturnedBuffersGoBackToTheOsWhenThePoolIsIdle(bool longTerm)
    {
        // The background thread's own steps, driven by hand: no call but the pool's rents and returns.
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20, DecommitDelay = TimeSpan.FromSeconds(10) });
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = longTerm });
        var rents = new List<IMemoryOwner<byte>>();
        for (int i = 0; i < 2000; i++)
        {
            IMemoryOwner<byte> r = pool.Rent(i % 5 == 0 ? 64 * 1024 : -1);
            r.Memory.Span.Fill(1);
            rents.Add(r);
        }
        long busy = heap.GetStatistics().CommittedBytes;
        rents.ForEach(r => r.Dispose());
        heap.RunCompactionStep(TimeSpan.FromSeconds(1));
        heap.RunCompactionStep(TimeSpan.FromSeconds(12));
        heap.RunCompactionStep(TimeSpan.FromSeconds(23));
        HeapStatistics s = heap.GetStatistics();
        long resident = s.CommittedBytes - s.PurgedFreeBytes;
        Assert.True(busy > 30L << 20, $"{busy} bytes committed while rented");
        // What stays: the slots the thread cache keeps for the next rents, and their pageblocks.
        Assert.True(resident <= 4L << 20, $"{resident} bytes resident 23 s after the last return ({busy} while rented)");
        Assert.Equal(0, s.LiveBlocks);
    }
}
