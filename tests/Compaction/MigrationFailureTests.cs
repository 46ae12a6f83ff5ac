using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>An exception inside a migration batch (here injected just before the pin-slot snapshot, with every block
/// of the batch frozen) leaves nothing frozen: the exception reaches the caller, and every block stays where it was,
/// intact, pinnable and freeable.</summary>
public sealed class MigrationFailureTests
{
    private sealed class InjectedFailure() : Exception("injected inside a migration batch");

    [Fact]
    public void AnExceptionInsideAMigrationBatchLeavesNoBlockFrozen()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false);
        var rng = new Random(6);
        var blocks = new List<BlockHandle>();
        for (int i = 0; i < 600; i++) blocks.Add(heap.Allocate(i % 3 == 0 ? 20_000 + rng.Next(40_000) : 16 + rng.Next(4_000)));
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        // Fragment: free two of every three, so that compaction has slabs to consolidate and runs to move.
        var live = new List<BlockHandle>();
        for (int i = 0; i < blocks.Count; i++) if (i % 3 == 1) live.Add(blocks[i]); else heap.Free(blocks[i]);
        var before = live.ToDictionary(h => h, heap.CurrentAddress);

        int injected = 0;
        Migrator.BeforePinSnapshot = () => { injected++; throw new InjectedFailure(); };
        try
        {
            Assert.Throws<InjectedFailure>(() => heap.Compact());
            Assert.Throws<InjectedFailure>(() => heap.Migrate(live[0]));
        }
        finally
        {
            Migrator.BeforePinSnapshot = null;
        }
        Assert.Equal(2, injected);

        // Nothing moved, nothing stays frozen: the validator rejects a frozen entry, and a pin or free of a frozen
        // block would wait for ever, so they run on another thread with a deadline.
        TestHeaps.AssertValid(heap);
        Assert.All(live, h => Assert.Equal(before[h], heap.CurrentAddress(h)));
        int corrupt = -1;
        var other = new Thread(() => corrupt = live.Sum(h => TestHeaps.CountCorrupt(heap, h))) { IsBackground = true };
        other.Start();
        Assert.True(other.Join(TimeSpan.FromSeconds(30)), "a block stayed frozen: pinning it never returned");
        Assert.Equal(0, corrupt);

        // And the heap compacts normally afterwards.
        CompactionStatistics run = heap.Compact();
        Assert.True(run.PgmigrateSuccess > 0);
        TestHeaps.AssertValid(heap);
        foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        foreach (BlockHandle h in live) heap.Free(h);
        Assert.True(heap.AllPageblocksFree());
    }
}
