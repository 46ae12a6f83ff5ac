using Compaction.Allocator.Os;
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

    /// <summary>An entry's last generation is 2^32 - 1: freeing that block retires the entry instead of wrapping its
    /// generation to 0 (which would make its first handle live again). The retired entry is never handed out again
    /// and its last handle stays stale. <see cref="NativeHeap.AgeEntry"/> skips the 2^32 - 2 cycles before.</summary>
    [Theory]
    [InlineData(true, 100)]
    [InlineData(false, 100)]
    [InlineData(true, 100_000)]
    [InlineData(false, 100_000)]
    public void AnEntryRetiresWhenItsGenerationWouldWrapAndIsNeverReused(bool caches, long size)
    {
        using NativeHeap heap = TestHeaps.Small(caches: caches);
        BlockHandle young = heap.Allocate(size);
        uint index = HandleBits.Index(young.Value);
        BlockHandle old = heap.AgeEntry(young, EntryState.LastGeneration - 1);
        Assert.False(heap.IsLive(young));
        Assert.True(heap.IsLive(old));
        heap.Free(old);
        BlockHandle last = heap.Allocate(size);           // last in, first out: the same entry, its last generation
        Assert.Equal(index, HandleBits.Index(last.Value));
        Assert.Equal(EntryState.LastGeneration, HandleBits.Generation(last.Value));
        long retiredBefore = heap.Handles.RetiredEntries, retiredInProcessBefore = HandleStore.RetiredEntries;
        heap.Free(last);                                   // retires the entry
        Assert.Equal(retiredBefore + 1, heap.Handles.RetiredEntries);
        Assert.True(HandleStore.RetiredEntries > retiredInProcessBefore);

        // The entry is on no free list: a chunk's worth of new blocks never gets it.
        var later = new List<BlockHandle>();
        for (int i = 0; i < HandleTable.ChunkEntries + 10; i++) later.Add(heap.Allocate(16));
        Assert.DoesNotContain(index, later.Select(h => HandleBits.Index(h.Value)));
        foreach (BlockHandle stale in new[] { young, old, last })
        {
            Assert.False(heap.IsLive(stale));
            Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => heap.Free(stale)).Reason);
            Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => heap.Pin(stale).Dispose()).Reason);
            Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => heap.GetSize(stale)).Reason);
        }
        foreach (BlockHandle h in later) heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>A live block whose entry is at its last generation when its heap is disposed: Dispose frees it as Free
    /// would, so the entry retires with the heap and the chunk's next owner skips it.</summary>
    [Fact]
    public void DisposeRetiresALiveEntryAtItsLastGeneration()
    {
        var heap = TestHeaps.Small(caches: false);
        BlockHandle last = heap.AgeEntry(heap.Allocate(100), EntryState.LastGeneration);
        uint index = HandleBits.Index(last.Value);
        heap.Dispose();
        unsafe
        {
            long state = HandleStore.Get(index)->State;
            Assert.True(EntryState.IsRetired(state) && (state & EntryState.Allocated) == 0, $"state 0x{state:x16}");
        }
    }

    /// <summary>A chunk given back by a disposed heap keeps its retired entries retired: the heap that takes the chunk
    /// next hands out every other entry of it, never the retired one, and counts it.</summary>
    [Fact]
    public void ARecycledChunkSkipsItsRetiredEntries()
    {
        uint index;
        using (var first = new HandleTable(OsMemory.Default))
        {
            var one = new uint[1];
            Assert.Equal(1, first.Pop(one));
            index = one[0];
            unsafe { HandleStore.Get(index)->State = EntryState.Retired | EntryState.WithGeneration(EntryState.LastGeneration); }
            first.NoteRetired();
        }
        // Chunks are given out most recently returned first, but another test may return one in between: take
        // tables until one gets the chunk.
        var tables = new List<HandleTable>();
        try
        {
            HandleTable? next = null;
            for (int attempt = 0; attempt < 64 && next == null; attempt++)
            {
                var t = new HandleTable(OsMemory.Default);
                tables.Add(t);
                t.Pop(new uint[1]);
                if (t.Owns(index)) next = t;
            }
            Assert.True(next != null, "no table got the chunk back");
            // Other tests may have retired entries of this chunk too (in an earlier life of it): count them all.
            uint chunkFirst = index & ~(uint)(HandleTable.ChunkEntries - 1);
            uint[] inChunk = Enumerable.Range(0, HandleTable.ChunkEntries).Select(i => chunkFirst + (uint)i).Where(i => i != 0).ToArray();
            int retired;
            unsafe { retired = inChunk.Count(i => EntryState.IsRetired(HandleStore.Get(i)->State)); }
            Assert.Equal(retired, next.RetiredEntries);
            var all = new uint[HandleTable.ChunkEntries];
            int n = next.Pop(all);
            uint[] fromChunk = all.Take(n).Where(i => (i & ~(uint)(HandleTable.ChunkEntries - 1)) == chunkFirst).ToArray();
            Assert.DoesNotContain(index, fromChunk);
            // Every other entry of the chunk was handed out: the one taken to probe, and these.
            Assert.Equal(inChunk.Length - retired, 1 + fromChunk.Length);
        }
        finally
        {
            foreach (HandleTable t in tables) t.Dispose();
        }
    }
}
