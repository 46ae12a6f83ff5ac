using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>
/// The caches under pressure and under exceptions (native-layout.md, sections 6 and 12): storage parked in caches
/// never makes an allocation fail, and an exception inside a cache section (a contended lock interrupted) leaves the
/// section and never hands one entry out twice.
/// </summary>
public sealed class CacheFailureTests
{
    private static void RunOn(Action a)
    {
        var t = new Thread(() => a());
        t.Start();
        t.Join();
    }

    [Fact]
    public void SmallAllocationsDrainRunsParkedInCachesBeforeFailing()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64, MovableZonePercent = 0, DirectCompaction = false });
        var runs = new List<BlockHandle>();
        while (heap.TryAllocate(64 * 1024, BlockKind.Unmovable, out BlockHandle h)) runs.Add(h);
        runs.ForEach(heap.Free);
        Assert.True(heap.GetStatistics().CachedRuns > 0);
        var small = new List<BlockHandle>();
        while (heap.TryAllocate(1024, BlockKind.Unmovable, out BlockHandle h)) small.Add(h);
        int first = small.Count;
        heap.DrainThreadCaches();
        while (heap.TryAllocate(1024, BlockKind.Unmovable, out BlockHandle h)) small.Add(h);
        Assert.Equal(first, small.Count);   // nothing more after a drain: the failing allocation had drained already
        TestHeaps.AssertValid(heap);
        small.ForEach(heap.Free);
    }

    [Fact]
    public void AnInterruptedRefillLeavesTheCacheSectionSoLaterDrainsFinish()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64, MovableZonePercent = 50 });
        Lock classLock = heap.Slabs[(int)BlockKind.Movable].Class[heap.Classes.ClassOf(1024)].Lock;
        using var held = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var holder = new Thread(() => { classLock.Enter(); held.Set(); release.Wait(); classLock.Exit(); });
        holder.Start();
        held.Wait();
        Exception? caught = null;
        using var worker = new ManualResetEventSlim();
        var alive = new Thread(() =>
        {
            Thread.CurrentThread.Interrupt();
            try { heap.Allocate(1024); } catch (Exception e) { caught = e; }
            worker.Wait();   // stays alive: the drain must not rely on the thread being dead
        });
        alive.Start();
        while (caught == null && alive.IsAlive) Thread.Sleep(1);
        release.Set();
        holder.Join();
        Assert.IsType<ThreadInterruptedException>(caught);
        var drain = new Thread(() => heap.DrainThreadCaches());
        drain.Start();
        bool done = drain.Join(10_000);
        worker.Set();
        alive.Join();
        Assert.True(done, "a drain hung on a cache section an exception left open");
        BlockHandle h = heap.Allocate(1024);
        heap.Free(h);
    }

    [Fact]
    public void AnInterruptedFlushNeverLeavesAnEntryBothInTheBinAndInTheDepot()
    {
        const int Size = 24 * 1024;   // 6 pages: the depot's room for them is not a multiple of a flush
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 8L << 20, PageblockPages = 64, MovableZonePercent = 0, DirectCompaction = false });
        var handles = new List<BlockHandle>();
        Exception? caught = null;
        var got = new List<BlockHandle>();
        Lock zoneLock = heap.NormalZone!.Lock;
        using var held = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        RunOn(() =>
        {
            for (int i = 0; i < 120; i++) handles.Add(heap.Allocate(Size, BlockKind.Unmovable));
            for (int i = 0; i < 96; i++) heap.Free(handles[i]);
            var holder = new Thread(() => { zoneLock.Enter(); held.Set(); release.Wait(); zoneLock.Exit(); });
            holder.Start();
            held.Wait();
            Thread.CurrentThread.Interrupt();
            try { heap.Free(handles[96]); } catch (Exception e) { caught = e; }
            release.Set();
            holder.Join();
            for (int i = 0; i < 40; i++) got.Add(heap.Allocate(Size, BlockKind.Unmovable));
        });
        Assert.IsType<ThreadInterruptedException>(caught);
        Assert.Equal(40, got.Count);
        Assert.Equal(got.Count, got.Select(h => h.Value).Distinct().Count());
        Assert.Empty(got.Intersect(handles.Skip(97)));
        Assert.All(got.Concat(handles.Skip(97)), h => Assert.True(heap.IsLive(h)));
    }

    [Fact]
    public void AnEntryRetiresOnTheContextFastPathAndOnTheRunPath()
    {
        using NativeHeap heap = TestHeaps.Small();
        HeapContext ctx = heap.GetThreadContext();
        BlockHandle first = ctx.Allocate(64);
        // A recycled chunk may already hold entries an earlier heap retired: count from here.
        long retired = heap.Handles.RetiredEntries;
        BlockHandle aged = heap.AgeEntry(first, uint.MaxValue);
        ctx.Free(aged);
        Assert.Equal(retired + 1, heap.Handles.RetiredEntries);
        TestHeaps.AssertValid(heap);
        BlockHandle run = ctx.Allocate(100_000);
        retired = heap.Handles.RetiredEntries;
        heap.Free(heap.AgeEntry(run, uint.MaxValue));
        Assert.Equal(retired + 1, heap.Handles.RetiredEntries);
        Assert.Throws<InvalidBlockHandleException>(() => heap.GetThreadContext().Free(aged));
        TestHeaps.AssertValid(heap);
    }
}
