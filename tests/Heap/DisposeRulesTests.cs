using System.Runtime.CompilerServices;
using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>When Dispose may release the heap, what a refused Dispose leaves untouched, and what happens to a heap
/// nobody disposes.</summary>
public sealed class DisposeRulesTests
{
    private static NativeHeap MovableOnly(bool background = false) => new(new HeapOptions
    {
        ArenaBytes = 16L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false,
        BackgroundCompaction = background, CompactionInterval = TimeSpan.FromMilliseconds(1),
    });

    private sealed class DisposingOwner(NativeHeap heap, bool inIsolate) : IMovableBlockOwner
    {
        public readonly List<Exception?> DisposeOutcomes = [];
        private void TryDispose() => DisposeOutcomes.Add(Record.Exception(heap.Dispose));
        public bool Isolate(BlockHandle handle) { if (inIsolate) TryDispose(); return true; }
        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress) { if (!inIsolate) TryDispose(); return OwnerMigrateResult.Success; }
        public void Putback(BlockHandle handle) { }
    }

    /// <summary>On the code this test was written against, the arena is unmapped under the migration's copy and the
    /// process dies: hence the trait.</summary>
    [Theory]
    [Trait(ProcessFatal.Trait, ProcessFatal.Value)]
    [InlineData(true)]
    [InlineData(false)]
    public void DisposeInsideAnOwnerCallbackIsRefusedAndTheMigrationFinishes(bool inIsolate)
    {
        NativeHeap heap = MovableOnly();
        BlockHandle h = heap.Allocate(30_000);   // a run at the bottom of the zone; the top is free
        TestHeaps.Fill(heap, h);
        TestHeaps.CommitFreeSpaceAbove(heap, 4);   // ...and committed, so the compactor may move the run into it
        var owner = new DisposingOwner(heap, inIsolate);
        heap.SetMovableOwner(h, owner);
        nint before;
        using (PinScope pin = heap.Pin(h)) before = pin.Address;

        heap.Compact();

        Assert.NotEmpty(owner.DisposeOutcomes);
        Assert.All(owner.DisposeOutcomes, e => Assert.IsType<InvalidOperationException>(e));
        Assert.True(heap.IsLive(h));
        using (PinScope pin = heap.Pin(h)) Assert.NotEqual(before, pin.Address);   // the owner agreed: it moved
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.SetMovableOwner(h, null);
        heap.Free(h);
        TestHeaps.AssertValid(heap);
        heap.Dispose();
    }

    [Fact]
    public void ADisposeRefusedBecauseOfAPinLeavesTheBackgroundCompactorRunning()
    {
        using NativeHeap heap = MovableOnly(background: true);
        BlockHandle h = heap.Allocate(100);
        Assert.True(heap.BackgroundCompactionRunning);
        long wakesAfterRefusal;
        using (PinScope pin = heap.Pin(h))
        {
            Assert.Throws<InvalidOperationException>(heap.Dispose);
            Assert.True(heap.BackgroundCompactionRunning, "the refused Dispose stopped the background compactor");
            wakesAfterRefusal = heap.GetStatistics().Compaction.CompactDaemonWake;
        }
        // It keeps waking (every millisecond): wait for one more wake, for at most 10 s.
        bool woke = SpinWait.SpinUntil(() => heap.GetStatistics().Compaction.CompactDaemonWake > wakesAfterRefusal, TimeSpan.FromSeconds(10));
        Assert.True(woke, "the background compactor did not wake again after the refused Dispose");
        heap.Free(h);
    }

    [Fact]
    public void AHeapWithBackgroundCompactionThatNobodyDisposesIsFinalized()
    {
        WeakReference heap = DropAHeapWithBackgroundCompaction();
        int collections = 0;
        for (; collections < 50 && heap.IsAlive; collections++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            Thread.Sleep(10);   // let the compactor thread finish a step it may be in (and drop what it holds)
        }
        Assert.False(heap.IsAlive, $"a dropped heap with background compaction survived {collections} collections: something roots it");
    }

    /// <summary>Not inlined, so that no local of the caller's frame keeps the heap reachable. A long weak reference
    /// (it tracks resurrection) dies only once the heap was finalized and collected.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference DropAHeapWithBackgroundCompaction()
    {
        var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 8L << 20, PageblockPages = 64, PerThreadCaches = false,
            BackgroundCompaction = true, CompactionInterval = TimeSpan.FromMilliseconds(5),
        });
        heap.Free(heap.Allocate(100));
        Assert.True(heap.BackgroundCompactionRunning);
        return new WeakReference(heap, trackResurrection: true);
    }
}
