using Compaction.Allocator;

namespace Compaction.Tests;

public sealed class HandleTableTests
{
    [Fact]
    public void FreedEntriesAreReusedLastInFirstOut()
    {
        using var table = new HandleTable();
        var first = new uint[5];
        Assert.Equal(5, table.Pop(first));
        Assert.Equal([1u, 2, 3, 4, 5], first);              // index 0 is never issued
        Assert.Equal(6u, table.Count);

        table.Push([2u, 4u]);
        Assert.Equal(2, table.FreeEntries);
        var again = new uint[3];
        Assert.Equal(3, table.Pop(again));
        Assert.Equal([4u, 2, 6], again);                     // the freed ones first, newest first; then a new one
        Assert.Equal(7u, table.Count);
        Assert.Equal(0, table.FreeEntries);
    }

    [Fact]
    public void TheTableGrowsByChunksAndNeverMovesAnEntry()
    {
        using var table = new HandleTable();
        var one = new uint[1];
        table.Pop(one);
        unsafe
        {
            HandleEntry* firstEntry = table.Get(one[0]);
            firstEntry->Size = 12345;
            var many = new uint[3 * HandleTable.ChunkEntries];
            Assert.Equal(many.Length, table.Pop(many));
            Assert.True(table.Get(one[0]) == firstEntry);
            Assert.Equal(12345, firstEntry->Size);
            Assert.True(table.Owns((nint)table.Get(many[^1])));
            using var other = new HandleTable();
            other.Pop(one);
            Assert.False(table.Owns((nint)other.Get(one[0])));
        }
        Assert.Equal(4L * HandleTable.ChunkEntries * 32, table.MetadataBytes);   // 32-byte entries, 4 chunks
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void EveryFreeBumpsTheGenerationSoEveryEarlierHandleIsStale(bool caches)
    {
        using NativeHeap heap = TestHeaps.Small(caches: caches);
        var earlier = new List<BlockHandle>();
        BlockHandle h = heap.Allocate(64);
        uint index = HandleBits.Index(h.Value);
        for (int round = 0; round < 50; round++)
        {
            Assert.Equal(index, HandleBits.Index(h.Value));                       // the entry is reused...
            Assert.Equal((uint)round, HandleBits.Generation(h.Value));            // ...one generation later
            foreach (BlockHandle old in earlier)
                Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => heap.GetSize(old)).Reason);
            Assert.Equal(64, heap.GetSize(h));
            heap.Free(h);
            earlier.Add(h);
            h = heap.Allocate(64);
        }
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AHandleCarriesItsHeapTagGenerationAndIndex()
    {
        ulong v = HandleBits.Encode(0xAB, 0x123456, 0xDEADBEEF);
        Assert.Equal(0xAB123456DEADBEEFUL, v);
        Assert.Equal((byte)0xAB, HandleBits.Tag(v));
        Assert.Equal(0x123456u, HandleBits.Generation(v));
        Assert.Equal(0xDEADBEEFu, HandleBits.Index(v));
        Assert.Equal(0x123456u, HandleBits.Generation(HandleBits.Encode(1, 0x7123456, 1)));   // 24 bits are kept
    }

    [Fact]
    public void EntriesOfFreedRunsAreReusedToo()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        var handles = Enumerable.Range(0, 100).Select(_ => heap.Allocate(70_000)).ToList();
        uint count = heap.Handles.Count;
        handles.ForEach(heap.Free);
        handles = Enumerable.Range(0, 100).Select(_ => heap.Allocate(50)).ToList();
        Assert.Equal(count, heap.Handles.Count);            // no new entry was made
        handles.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }
}
