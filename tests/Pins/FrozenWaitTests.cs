using Compaction.Allocator;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Migration;

namespace Compaction.Tests;

/// <summary>
/// A thread that meets a block frozen by a migration spins a little, then sleeps on the frozen-wait gate, and goes on
/// once the migration has unfrozen the block. Here the migration is held inside its batch (the block frozen) by the
/// test hook until the waiter is seen asleep; no assertion depends on time.
/// </summary>
public sealed class FrozenWaitTests
{
    [Fact]
    public void APinOfAFrozenBlockSleepsUntilTheMigrationUnfreezesItAndSeesTheNewAddress()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false);
        BlockHandle h = heap.Allocate(200);
        TestHeaps.Fill(heap, h);
        nint before = heap.CurrentAddress(h);
        nint seen = 0;
        int corrupt = -1;
        MigrateResult result = WhileFrozen(heap, h, () =>
        {
            using BlockPin pin = heap.AcquirePin(h);   // an atomic pin first, then a PinScope (inside CountCorrupt)
            seen = heap.CurrentAddress(h);
            corrupt = TestHeaps.CountCorrupt(heap, h);
        });
        Assert.Equal(MigrateResult.Success, result);
        Assert.Equal(0, corrupt);
        Assert.NotEqual(before, seen);
        Assert.Equal(heap.CurrentAddress(h), seen);
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AFreeOfAFrozenBlockSleepsUntilTheMigrationUnfreezesIt()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, caches: false);
        BlockHandle h = heap.Allocate(5000);
        TestHeaps.Fill(heap, h);
        MigrateResult result = WhileFrozen(heap, h, () => heap.Free(h));
        Assert.Equal(MigrateResult.Success, result);
        Assert.Throws<InvalidBlockHandleException>(() => heap.Free(h));
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }

    /// <summary>Migrates <paramref name="h"/> on a thread of its own, held inside the batch (block frozen) until
    /// <paramref name="waiter"/>, run on a third thread, is asleep on the gate; then lets the migration finish and
    /// waits for both. Returns the migration's result.</summary>
    private static MigrateResult WhileFrozen(NativeHeap heap, BlockHandle h, Action waiter)
    {
        using var frozen = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        MigrateResult result = MigrateResult.Busy;
        var migrator = new Thread(() =>
        {
            Migrator.BeforePinSnapshot = () => { frozen.Set(); release.Wait(); };
            try
            {
                result = heap.Migrate(h);
            }
            finally
            {
                Migrator.BeforePinSnapshot = null;
            }
        })
        { IsBackground = true };
        migrator.Start();
        Assert.True(frozen.Wait(TimeSpan.FromSeconds(30)), "the migration never reached its batch");
        Exception? failed = null;
        var other = new Thread(() =>
        {
            try { waiter(); }
            catch (Exception e) { failed = e; }
        })
        { IsBackground = true };
        other.Start();
        DateTime deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (FrozenWait.Sleepers == 0 && other.IsAlive && DateTime.UtcNow < deadline) Thread.Sleep(1);
        bool slept = FrozenWait.Sleepers > 0;
        release.Set();
        Assert.True(other.Join(TimeSpan.FromSeconds(30)), "the waiter was never woken");
        Assert.True(migrator.Join(TimeSpan.FromSeconds(30)), "the migration never finished");
        Assert.Null(failed);
        Assert.True(slept, "the waiter did not sleep on the gate while the block was frozen");
        return result;
    }
}
