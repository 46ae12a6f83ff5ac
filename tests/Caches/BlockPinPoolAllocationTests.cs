using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>BlockPin records come from one process-wide pool: a test that counts this thread's managed allocations
/// while pinning runs alone (the process-wide collection), since another test's pins held at the same moment would
/// make the pool grow under it.</summary>
[Collection(ProcessWideResources.Name)]
public sealed class BlockPinPoolAllocationTests
{
    [Fact]
    public void BlockPinsTakenAndReleasedOnManyThreadsAllocateNothingAndBalance()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle[] blocks = Enumerable.Range(0, 64).Select(_ => heap.Allocate(256)).ToArray();
        for (int i = 0; i < 1000; i++) heap.AcquirePin(blocks[i % 64]).Dispose();   // warm the pool
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10_000; i++) heap.AcquirePin(blocks[i % 64]).Dispose();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Parallel.For(0, 4, t =>
        {
            var held = new List<BlockPin>();
            for (int i = 0; i < 20_000; i++)
            {
                held.Add(heap.AcquirePin(blocks[(i * 7 + t) % 64]));
                if (held.Count > 16) { held[0].Dispose(); held[0].Dispose(); held.RemoveAt(0); }
            }
            held.ForEach(p => p.Dispose());
        });
        foreach (BlockHandle b in blocks) heap.Free(b);   // every pin was released exactly once
        TestHeaps.AssertValid(heap);
    }
}
