using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>An owner callback on the compactor thread that stops background compaction ends the thread after the
/// current step without waiting for itself; a Dispose on another thread meanwhile still waits for that step, so the
/// arena and the handle entries are never released under a running migration.</summary>
[Collection(ProcessWideResources.Name)]
public sealed class BackgroundCompactionDisposeTests
{
    private sealed class StoppingOwner(int testThread) : IMovableBlockOwner, IDisposable
    {
        public readonly ManualResetEventSlim InCallback = new();
        public NativeHeap? Heap;
        public BlockHandle Migrating;
        public volatile bool CallbackEnded;
        private int _fired;

        public bool Isolate(BlockHandle handle) => true;
        public void Putback(BlockHandle handle) { }

        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress)
        {
            if (Environment.CurrentManagedThreadId != testThread && Interlocked.Exchange(ref _fired, 1) == 0)
            {
                Migrating = handle;
                Heap!.StopBackgroundCompaction();   // on the compactor thread: returns at once
                InCallback.Set();
                Thread.Sleep(300);                  // the test's Dispose starts meanwhile
                CallbackEnded = true;
            }
            return OwnerMigrateResult.Success;
        }

        public void Dispose() => InCallback.Dispose();
    }

    [Fact]
    public void DisposeWaitsForTheStepOfACompactorThatAnOwnerCallbackStopped()
    {
        using var owner = new StoppingOwner(Environment.CurrentManagedThreadId);
        var a = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 8L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false,
            CompactionBudgetBytes = 0, CompactionBudgetTime = TimeSpan.Zero, CompactionInterval = TimeSpan.FromMilliseconds(1),
        });
        owner.Heap = a;
        var blocks = new List<BlockHandle>();
        while (a.TryAllocate(20_000, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        for (int i = 0; i < blocks.Count; i++)
            if (i % 4 == 0) a.SetMovableOwner(blocks[i], owner); else a.Free(blocks[i]);
        Assert.True(a.GetStatistics().FragmentationScore > 90, "the layout must make the background pass run");
        a.StartBackgroundCompaction();
        Assert.True(owner.InCallback.Wait(TimeSpan.FromSeconds(10)), "no owned block migrated");
        Assert.False(a.BackgroundCompactionRunning);

        a.Dispose();
        Assert.True(owner.CallbackEnded, "Dispose returned while the stopped thread's step was still migrating");

        // The step ended before the entries went back: a heap that takes them over never accepts a's handle.
        using var b = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64 });
        b.Free(b.Allocate(100));
        Assert.False(b.IsLive(owner.Migrating));
    }
}
