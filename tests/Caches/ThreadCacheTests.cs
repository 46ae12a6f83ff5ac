using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>Per-thread caches and the disable/drain protocol (the kernel's lru_cache_disable, seed 001).</summary>
public sealed class ThreadCacheTests
{
    /// <summary>A live thread that runs work items for a heap and stays alive (with its cache) between them.</summary>
    private sealed class Worker : IDisposable
    {
        private readonly Thread _thread;
        private readonly System.Collections.Concurrent.BlockingCollection<(Action Work, ManualResetEventSlim Done)> _queue = new();

        public Worker()
        {
            _thread = new Thread(() =>
            {
                foreach ((Action work, ManualResetEventSlim done) in _queue.GetConsumingEnumerable())
                {
                    work();
                    done.Set();
                }
            })
            { IsBackground = true };
            _thread.Start();
        }

        public void Run(Action work)
        {
            using var done = new ManualResetEventSlim();
            _queue.Add((work, done));
            done.Wait();
        }

        public void Dispose()
        {
            _queue.CompleteAdding();
            _thread.Join();
        }
    }

    private static void Churn(NativeHeap heap, int blocks, long size = 64)
    {
        var handles = Enumerable.Range(0, blocks).Select(_ => heap.Allocate(size)).ToList();
        handles.ForEach(heap.Free);
    }

    [Fact]
    public void AllocationAndFreeGoThroughTheCallingThreadsCache()
    {
        using NativeHeap heap = TestHeaps.Small();
        Churn(heap, 20);
        Assert.True(heap.CachedSlots() > 0);
        Assert.Equal(heap.CachedSlots(), heap.GetStatistics().CachedSlots);
        TestHeaps.AssertValid(heap);   // the validator counts cached slots as used in their slabs
    }

    [Fact]
    public void DisablingThreadCachesDrainsEveryThreadsCacheIncludingAnotherLiveThreads()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var worker = new Worker();
        worker.Run(() => Churn(heap, 20));
        long workerSlots = heap.CachedSlots();
        Assert.True(workerSlots > 0, "the worker's cache holds slots");
        Churn(heap, 20, size: 200);
        Assert.True(heap.CachedSlots() > workerSlots, "and so does this thread's");
        SlabClass cls = heap.Slabs[(int)BlockKind.Movable].Class[heap.Classes.ClassOf(64)];
        Assert.True(cls.UsedSlots > 0, "cached slots count as used in their slabs");

        heap.DisableThreadCaches();
        try
        {
            Assert.True(heap.ThreadCachesDisabled);
            Assert.Equal(0, heap.CachedSlots());
            Assert.Equal(0, cls.UsedSlots);            // back in the slab, which is what a migration needs
            TestHeaps.AssertValid(heap);
        }
        finally
        {
            heap.EnableThreadCaches();
        }
    }

    [Fact]
    public void WhileCachesAreDisabledAllocationsAndFreesBypassThemOnEveryThread()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var worker = new Worker();
        SlabClass cls = heap.Slabs[(int)BlockKind.Movable].Class[heap.Classes.ClassOf(64)];
        heap.DisableThreadCaches();
        try
        {
            BlockHandle mine = heap.Allocate(64);
            Assert.Equal(1, cls.UsedSlots);            // exactly the block: no batch went into a cache
            BlockHandle theirs = default;
            worker.Run(() => theirs = heap.Allocate(64));
            Assert.Equal(2, cls.UsedSlots);
            Assert.Equal(0, heap.CachedSlots());
            worker.Run(() => heap.Free(theirs));
            heap.Free(mine);
            Assert.Equal(0, cls.UsedSlots);            // frees reached the slab at once
            Assert.Equal(0, heap.CachedSlots());
            worker.Run(() => Churn(heap, 50));
            Churn(heap, 50);
            Assert.Equal(0, heap.CachedSlots());
            Assert.Equal(0, heap.GetStatistics().LiveBlocks);
            TestHeaps.AssertValid(heap);
        }
        finally
        {
            heap.EnableThreadCaches();
        }
    }

    [Fact]
    public void DisablingNestsAndEnablingTurnsTheCachesBackOn()
    {
        using NativeHeap heap = TestHeaps.Small();
        heap.DisableThreadCaches();
        heap.DisableThreadCaches();
        heap.EnableThreadCaches();
        Assert.True(heap.ThreadCachesDisabled);        // one disabler is still active
        Churn(heap, 10);
        Assert.Equal(0, heap.CachedSlots());

        heap.EnableThreadCaches();
        Assert.False(heap.ThreadCachesDisabled);
        Churn(heap, 10);
        Assert.True(heap.CachedSlots() > 0);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void DrainingLeavesTheCachesOn()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var worker = new Worker();
        worker.Run(() => Churn(heap, 20));
        heap.DrainThreadCaches();
        Assert.Equal(0, heap.CachedSlots());
        Assert.False(heap.ThreadCachesDisabled);
        worker.Run(() => Churn(heap, 20));
        Assert.True(heap.CachedSlots() > 0);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AHeapCreatedWithoutCachesNeverCaches()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        using var worker = new Worker();
        worker.Run(() => Churn(heap, 50));
        Churn(heap, 50);
        Assert.Equal(0, heap.CachedSlots());
        TestHeaps.AssertValid(heap);
    }
}
