using System.Buffers;
using System.Runtime.CompilerServices;
using Compaction.Allocator;
using Compaction.Interop;
using Microsoft.Win32.SafeHandles;

namespace Compaction.Tests;

public sealed class NativeBlockMemoryManagerTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"nbmm-{Guid.NewGuid():N}.bin");

    public void Dispose() => File.Delete(_path);

    public static TheoryData<long, BlockKind> Blocks => new()
    {
        { 1, BlockKind.Movable },
        { 1000, BlockKind.Movable },
        { 1000, BlockKind.Unmovable },
        { 100_000, BlockKind.Movable },
        { 100_000, BlockKind.Unmovable },
        { 3 << 20, BlockKind.Movable },
    };

    [Theory]
    [MemberData(nameof(Blocks))]
    public async Task BytesWrittenToAFileStreamFromArenaMemoryReadBackIntoAnotherBlock(long size, BlockKind kind)
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle source = heap.Allocate(size, kind), target = heap.Allocate(size, kind);
        TestHeaps.Fill(heap, source);
        using (var src = new NativeBlockMemoryManager(heap, source, ownsBlock: true))
        using (var dst = new NativeBlockMemoryManager(heap, target))
        {
            await using (var file = new FileStream(_path, FileMode.Create, FileAccess.Write, FileShare.None, 4096, FileOptions.Asynchronous))
                await file.WriteAsync(src.Memory);
            Assert.Equal(size, new FileInfo(_path).Length);

            await using (var file = new FileStream(_path, FileMode.Open, FileAccess.Read, FileShare.None, 4096, FileOptions.Asynchronous))
            {
                int total = 0;
                while (total < dst.Length)
                {
                    int n = await file.ReadAsync(dst.Memory[total..]);
                    Assert.NotEqual(0, n);
                    total += n;
                }
            }
            Span<byte> copy = dst.GetSpan();
            for (int i = 0; i < copy.Length; i++)
                if (copy[i] != TestHeaps.Pattern(source, i)) Assert.Fail($"byte {i} differs after the round trip");
        }
        Assert.False(heap.IsLive(source));   // owned: freed with its manager
        heap.Free(target);
        TestHeaps.AssertValid(heap);
    }

    [Theory]
    [MemberData(nameof(Blocks))]
    public async Task RandomAccessWritesAndReadsArenaMemoryAtAnOffset(long size, BlockKind kind)
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle source = heap.Allocate(size, kind), target = heap.Allocate(size, kind), asyncTarget = heap.Allocate(size, kind);
        TestHeaps.Fill(heap, source);
        using var src = new NativeBlockMemoryManager(heap, source, ownsBlock: true);
        using var dst = new NativeBlockMemoryManager(heap, target, ownsBlock: true);
        using var asyncDst = new NativeBlockMemoryManager(heap, asyncTarget, ownsBlock: true);
        const long offset = 12_345;
        using (SafeFileHandle file = File.OpenHandle(_path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous))
        {
            RandomAccess.Write(file, src.GetSpan(), offset);
            await RandomAccess.WriteAsync(file, src.Memory, offset + size);
            Assert.Equal(offset + 2 * size, RandomAccess.GetLength(file));

            Assert.Equal((int)size, ReadFully(file, dst.GetSpan(), offset + size));
            int total = 0;
            while (total < asyncDst.Length)
            {
                int n = await RandomAccess.ReadAsync(file, asyncDst.Memory[total..], offset + total);
                Assert.NotEqual(0, n);
                total += n;
            }
        }
        Assert.True(src.GetSpan().SequenceEqual(dst.GetSpan()));
        Assert.True(src.GetSpan().SequenceEqual(asyncDst.GetSpan()));
    }

    private static int ReadFully(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer[total..], offset + total);
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    [Fact]
    public void MemoryOfAnUnmovableBlockIsItsStablePointerAndTakesNoPin()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(500, BlockKind.Unmovable);
        var manager = new NativeBlockMemoryManager(heap, h);
        using (MemoryHandle pinned = manager.Memory.Pin())
            unsafe { Assert.Equal(heap.GetStablePointer(h), (nint)pinned.Pointer); }
        heap.Free(h);     // no pin: the owner may free it (and must not use the memory afterwards)
        heap.Dispose();   // nor does the manager keep the heap from being disposed
        ((IDisposable)manager).Dispose();
    }

    [Fact]
    public void MovableBlockCannotBeFreedOrMigratedWhileItsManagerLives()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(70_000);   // a page run: migration always has somewhere to go
        var manager = new NativeBlockMemoryManager(heap, h);
        Assert.Throws<InvalidOperationException>(() => heap.Free(h));
        Assert.Equal(MigrateResult.Pinned, heap.Migrate(h));
        Assert.Throws<InvalidOperationException>(heap.Dispose);
        Assert.True(heap.IsLive(h));
        TestHeaps.AssertValid(heap);

        ((IDisposable)manager).Dispose();
        Assert.Equal(MigrateResult.Success, heap.Migrate(h));   // the pin is gone: the compactor may move it again
        heap.Free(h);
        Assert.False(heap.IsLive(h));
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void DisposingAnOwningManagerReleasesThePinAndFreesTheBlock()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(70_000);
        var manager = new NativeBlockMemoryManager(heap, h, ownsBlock: true);
        Assert.True(manager.OwnsBlock);
        ((IDisposable)manager).Dispose();
        InvalidBlockHandleException e = Assert.Throws<InvalidBlockHandleException>(() => heap.Free(h));
        Assert.Equal(InvalidHandleReason.Stale, e.Reason);
        Assert.Equal(0, heap.GetStatistics().LiveBlocks);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void EveryMemberThrowsObjectDisposedAfterDispose()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(64);
        var manager = new NativeBlockMemoryManager(heap, h);
        Memory<byte> early = manager.Memory;
        ((IDisposable)manager).Dispose();
        Assert.True(manager.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => manager.GetSpan());
        Assert.Throws<ObjectDisposedException>(() => manager.Memory);
        Assert.Throws<ObjectDisposedException>(() => manager.Pin());
        Assert.Throws<ObjectDisposedException>(() => manager.Pin(3));
        Assert.Throws<ObjectDisposedException>(() => manager.Pin(-1));      // disposal is reported before the index
        Assert.Throws<ObjectDisposedException>(manager.Unpin);
        Assert.Throws<ObjectDisposedException>(() => { _ = early.Span; });    // a Memory taken before goes dead too
        Assert.Throws<ObjectDisposedException>(() => early.Pin());
        ((IDisposable)manager).Dispose();                               // twice: nothing happens
        heap.Free(h);                                                   // not owned: the caller frees it
        TestHeaps.AssertValid(heap);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(777)]
    [InlineData(999)]
    [InlineData(1000)]
    public void PinAtAnIndexPointsAtThatByte(int index)
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(1000);
        TestHeaps.Fill(heap, h);
        using var manager = new NativeBlockMemoryManager(heap, h, ownsBlock: true);
        unsafe
        {
            byte* first = (byte*)Unsafe.AsPointer(ref manager.GetSpan()[0]);
            using MemoryHandle pinned = manager.Pin(index);
            Assert.Equal((nint)(first + index), (nint)pinned.Pointer);
            if (index < 1000) Assert.Equal(TestHeaps.Pattern(h, index), *(byte*)pinned.Pointer);
            using MemoryHandle sliced = manager.Memory[index..].Pin();    // Memory<T>.Pin goes through Pin(index)
            Assert.Equal((nint)pinned.Pointer, (nint)sliced.Pointer);
        }
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(1001)]
    [InlineData(int.MinValue)]
    [InlineData(int.MaxValue)]
    public void PinOutsideTheBlockIsRefused(int index)
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(1000);
        using var manager = new NativeBlockMemoryManager(heap, h, ownsBlock: true);
        ArgumentOutOfRangeException e = Assert.Throws<ArgumentOutOfRangeException>(() => manager.Pin(index));
        Assert.Equal("elementIndex", e.ParamName);
        manager.Pin().Dispose();   // the refused pin was not counted: a balanced pin and unpin still work
    }

    [Fact]
    public void DisposeWithAnOutstandingMemoryHandleIsRefusedUntilTheHandleIsReleased()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(256);
        var manager = new NativeBlockMemoryManager(heap, h, ownsBlock: true);
        MemoryHandle pinned = manager.Memory.Pin();
        Assert.Throws<InvalidOperationException>(() => ((IDisposable)manager).Dispose());
        Assert.False(manager.IsDisposed);
        Assert.True(heap.IsLive(h));
        Assert.Equal(256, manager.GetSpan().Length);                       // still usable
        pinned.Dispose();
        ((IDisposable)manager).Dispose();
        Assert.False(heap.IsLive(h));
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void UnpinWithoutAPinIsAnUnbalancedUnpin()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var manager = new NativeBlockMemoryManager(heap, heap.Allocate(16), ownsBlock: true);
        Assert.Throws<InvalidOperationException>(manager.Unpin);
        MemoryHandle pinned = manager.Pin();
        pinned.Dispose();
        Assert.Throws<InvalidOperationException>(manager.Unpin);
    }

    [Fact]
    public void InvalidHandlesAreRefusedWithoutAcquiringAnything()
    {
        using NativeHeap heap = TestHeaps.Small();
        using NativeHeap other = TestHeaps.Small();
        BlockHandle stale = heap.Allocate(16);
        heap.Free(stale);
        Assert.Throws<ArgumentNullException>(() => new NativeBlockMemoryManager(null!, stale));
        Assert.Equal(InvalidHandleReason.Null, Assert.Throws<InvalidBlockHandleException>(() => new NativeBlockMemoryManager(heap, default)).Reason);
        Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => new NativeBlockMemoryManager(heap, stale)).Reason);
        BlockHandle foreign = other.Allocate(16);
        Assert.Equal(InvalidHandleReason.Foreign, Assert.Throws<InvalidBlockHandleException>(() => new NativeBlockMemoryManager(heap, foreign)).Reason);
        other.Free(foreign);
        TestHeaps.AssertValid(heap);
        heap.Dispose();   // nothing was pinned by the refused constructors
    }

    [Fact]
    public void ABlockLargerThanAMemoryCanCoverIsRefusedWithoutAPin()
    {
        // 2 GiB + 1 is only committed (mprotect), never touched, so the test costs address space, not memory.
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, arenaBytes: 5L << 30, pageblockPages: 512);
        BlockHandle h = heap.Allocate(int.MaxValue + 1L);
        ArgumentOutOfRangeException e = Assert.Throws<ArgumentOutOfRangeException>(() => new NativeBlockMemoryManager(heap, h, ownsBlock: true));
        Assert.Equal("handle", e.ParamName);
        heap.Free(h);        // neither pinned nor freed by the refused constructor
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public async Task PinHeldByTheManagerSurvivesAwaitOnAnotherThread()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(4096);
        var manager = new NativeBlockMemoryManager(heap, h, ownsBlock: true);
        await Task.Run(() => manager.GetSpan().Fill(0x5A));
        await Task.Yield();
        Assert.Throws<InvalidOperationException>(() => heap.Free(h));
        await Task.Run(() => ((IDisposable)manager).Dispose());          // released on another thread
        Assert.False(heap.IsLive(h));
        TestHeaps.AssertValid(heap);
    }
}
