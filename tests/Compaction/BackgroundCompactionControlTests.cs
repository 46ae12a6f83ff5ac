using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>Starting and stopping the background compactor from anywhere, including from an owner callback that the
/// compactor thread itself is running, never hangs, and the heap can be compacted and disposed afterwards.</summary>
public sealed class BackgroundCompactionControlTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private sealed class CallbackOwner(int testThread, Action onCompactorThread) : IMovableBlockOwner
    {
        private int _fired;
        public bool Isolate(BlockHandle handle)
        {
            if (Environment.CurrentManagedThreadId != testThread && Interlocked.Exchange(ref _fired, 1) == 0) onCompactorThread();
            return true;
        }
        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress) => OwnerMigrateResult.Success;
        public void Putback(BlockHandle handle) { }
    }

    /// <summary>A movable zone three quarters free in every pageblock (fragmentation score above 90): the
    /// background compactor's next wake runs a proactive pass over the kept, owned runs.</summary>
    private static (NativeHeap heap, List<BlockHandle> kept) FragmentedWithOwners(IMovableBlockOwner owner)
    {
        var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 32L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false,
            CompactionBudgetBytes = 0, CompactionBudgetTime = TimeSpan.Zero, CompactionInterval = TimeSpan.FromMilliseconds(1),
        });
        var blocks = new List<BlockHandle>();
        while (heap.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        var kept = new List<BlockHandle>();
        for (int i = 0; i < blocks.Count; i++)
            if (i % 4 == 0) kept.Add(blocks[i]); else heap.Free(blocks[i]);
        foreach (BlockHandle h in kept) { TestHeaps.Fill(heap, h); heap.SetMovableOwner(h, owner); }
        Assert.True(heap.GetStatistics().FragmentationScore > 90, "the layout must be above the high watermark");
        return (heap, kept);
    }

    private static bool Within(TimeSpan patience, Action action)
    {
        var t = new Thread(() => action()) { IsBackground = true };
        t.Start();
        return t.Join(patience);
    }

    /// <summary>After the callbacks returned: the heap compacts, keeps every byte and disposes, each within the
    /// patience (a hang shows up as a failure, not as a hung test run).</summary>
    private static void AssertStillCompactsAndDisposes(NativeHeap heap, List<BlockHandle> kept)
    {
        Assert.True(Within(Patience, () => heap.StopBackgroundCompaction()), "StopBackgroundCompaction hung afterwards");
        Assert.True(Within(Patience, () => heap.Compact()), "Compact hung afterwards");
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        Assert.True(Within(Patience, heap.Dispose), "Dispose hung afterwards");
    }

    [Fact]
    public void StoppingBackgroundCompactionFromAnOwnerCallbackOnTheCompactorThreadReturns()
    {
        using var returned = new ManualResetEventSlim();
        Exception? fromStop = null;
        var holder = new HeapHolder();
        var owner = new CallbackOwner(Environment.CurrentManagedThreadId, () =>
        {
            try { fromStop = Record.Exception(() => holder.Heap!.StopBackgroundCompaction()); }
            finally { returned.Set(); }
        });
        (NativeHeap heap, List<BlockHandle> kept) = FragmentedWithOwners(owner);
        holder.Heap = heap;
        heap.StartBackgroundCompaction();

        Assert.True(returned.Wait(Patience), "StopBackgroundCompaction, called on the compactor thread, did not return (the thread joins itself)");
        Assert.True(fromStop is null or InvalidOperationException, $"StopBackgroundCompaction threw {fromStop}");
        if (fromStop == null)
            Assert.True(SpinWait.SpinUntil(() => !heap.BackgroundCompactionRunning, Patience), "the compactor kept running after it was stopped");
        AssertStillCompactsAndDisposes(heap, kept);
    }

    [Fact]
    public void StartingBackgroundCompactionFromAnOwnerCallbackWhileAnotherThreadStopsItReturns()
    {
        using var inCallback = new ManualResetEventSlim();
        using var startReturned = new ManualResetEventSlim();
        using var stopReturned = new ManualResetEventSlim();
        Exception? fromStart = null;
        var holder = new HeapHolder();
        var owner = new CallbackOwner(Environment.CurrentManagedThreadId, () =>
        {
            inCallback.Set();
            Thread.Sleep(500);   // the other thread's Stop is now waiting for this step to end
            try { fromStart = Record.Exception(() => holder.Heap!.StartBackgroundCompaction()); }
            finally { startReturned.Set(); }
        });
        (NativeHeap heap, List<BlockHandle> kept) = FragmentedWithOwners(owner);
        holder.Heap = heap;
        heap.StartBackgroundCompaction();
        Assert.True(inCallback.Wait(Patience), "the background compactor never migrated an owned block");
        new Thread(() => { heap.StopBackgroundCompaction(); stopReturned.Set(); }) { IsBackground = true }.Start();

        Assert.True(startReturned.Wait(Patience), "StartBackgroundCompaction, called on the compactor thread while another thread stops it, did not return");
        Assert.True(stopReturned.Wait(Patience), "StopBackgroundCompaction did not return while the compactor thread started it");
        Assert.True(fromStart is null or InvalidOperationException, $"StartBackgroundCompaction threw {fromStart}");
        AssertStillCompactsAndDisposes(heap, kept);
    }

    private sealed class HeapHolder
    {
        public NativeHeap? Heap;
    }
}
