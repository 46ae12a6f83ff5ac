using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>A handle names one block for ever: once its block is freed, no later block may be reached through it,
/// however often its handle-table entry is reused.</summary>
public sealed class HandleGenerationTests
{
    private const int Cycles = 1 << 24;

    /// <summary>One thread, per-thread caches on (the fast path: about 8 s in a Debug build, 1 s optimised).</summary>
    [Fact]
    public void AStaleHandleIsRejectedAfterTwoToThe24CyclesOfItsEntry()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle stale = heap.Allocate(16);
        heap.Free(stale);
        // Entries are reused last in, first out: every cycle hands the same entry out again with a new generation.
        for (int i = 1; i < Cycles; i++) heap.Free(heap.Allocate(16));
        BlockHandle fresh = heap.Allocate(16);
        TestHeaps.Fill(heap, fresh);

        Assert.False(heap.IsLive(stale), $"IsLive accepts the stale {stale} while {fresh} lives (bit-identical: {stale == fresh})");
        Exception? pin = Record.Exception(() => heap.Pin(stale).Dispose());
        Assert.True(pin is InvalidBlockHandleException { Reason: InvalidHandleReason.Stale }, $"Pin(stale) threw {pin?.GetType().Name ?? "nothing"}");
        Exception? free = Record.Exception(() => heap.Free(stale));
        Assert.True(free is InvalidBlockHandleException { Reason: InvalidHandleReason.Stale }, $"Free(stale) threw {free?.GetType().Name ?? "nothing"}: it freed the live block");

        Assert.True(heap.IsLive(fresh));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, fresh));
        heap.Free(fresh);
        TestHeaps.AssertValid(heap);
    }
}
