using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>A movable owner's callback may not pin the block being migrated: every pin path, the long-term pin's
/// included, throws <see cref="InvalidOperationException"/> there instead of waiting for a freeze the calling thread holds.</summary>
public sealed class OwnerCallbackLongTermPinTests
{
    [Theory]
    [InlineData(100)]      // a slab block
    [InlineData(40_000)]   // a run
    public void ALongTermPinOfTheBlockBeingMigratedFromItsOwnersMigrateThrowsInsteadOfHanging(long size)
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 16L << 20, PageblockPages = 64, MovableZonePercent = 50, DirectCompaction = false, PerThreadCaches = false,
        });
        // A block low in the movable zone with free, committed room above it, so that Compact moves it.
        var fill = new List<BlockHandle>();
        for (int i = 0; i < 64; i++) fill.Add(heap.Allocate(size));
        BlockHandle target = fill[0];
        for (int i = 1; i < fill.Count; i++) heap.Free(fill[i]);
        TestHeaps.CommitFreeSpaceAbove(heap, 4);
        var owner = new PinningOwner(heap);
        heap.SetMovableOwner(target, owner);

        var compact = new Thread(() => heap.Compact()) { IsBackground = true };
        compact.Start();
        Assert.True(compact.Join(TimeSpan.FromSeconds(60)), "Compact hung: the owner's long-term pin waited for its own freeze");

        Assert.True(owner.Calls > 0, "the block was never migrated");
        Assert.All(owner.Results, e => Assert.IsType<InvalidOperationException>(e));
        Assert.Equal(owner.Calls, owner.Results.Count);
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        using BlockPin pin = heap.PinLongTerm(target);   // outside the callback it works
        Assert.Equal(BlockKind.Unmovable, heap.GetKind(target));
    }

    private sealed class PinningOwner(NativeHeap heap) : IMovableBlockOwner
    {
        public readonly List<Exception> Results = [];
        public int Calls;
        public bool Isolate(BlockHandle h) => true;
        public OwnerMigrateResult Migrate(BlockHandle h, nint from, nint to)
        {
            Calls++;
            try
            {
                heap.PinLongTerm(h).Dispose();
            }
            catch (Exception e)
            {
                Results.Add(e);
            }
            return OwnerMigrateResult.Success;
        }
        public void Putback(BlockHandle h) { }
    }
}
