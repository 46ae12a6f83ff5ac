using Compaction.Allocator.Os;
using Compaction.Allocator;

namespace Compaction.Tests;

public sealed class HandleTableTests
{
    [Fact]
    public void FreedEntriesAreReusedLastInFirstOut()
    {
        using var table = new HandleTable(OsMemory.Default);
        var first = new uint[5];
        Assert.Equal(5, table.Pop(first));
        // A chunk's entries come lowest index first (index 0 is never issued; a recycled chunk skips retired entries).
        Assert.True(first[0] != 0 && first.Zip(first.Skip(1)).All(p => p.First < p.Second), string.Join(", ", first));
        Assert.All(first, i => Assert.True(table.Owns(i)));
        long free = table.FreeEntries;                        // the rest of the chunk

        table.Push([first[1], first[3]]);
        Assert.Equal(free + 2, table.FreeEntries);
        var again = new uint[3];
        Assert.Equal(3, table.Pop(again));
        Assert.Equal(first[3], again[0]);                    // the freed ones first, newest first...
        Assert.Equal(first[1], again[1]);
        Assert.True(again[2] > first[4]);                    // ...then the next entry of the chunk
        Assert.Equal(free - 1, table.FreeEntries);
    }

    [Fact]
    public void TheTableGrowsByChunksAndNeverMovesAnEntry()
    {
        using var table = new HandleTable(OsMemory.Default);
        var one = new uint[1];
        table.Pop(one);
        unsafe
        {
            HandleEntry* firstEntry = table.Get(one[0]);
            firstEntry->Address = 12345;   // a popped entry is ours: its Address is free to bind
            var many = new uint[3 * HandleTable.ChunkEntries];
            Assert.Equal(many.Length, table.Pop(many));
            Assert.True(table.Get(one[0]) == firstEntry);
            Assert.Equal(12345, firstEntry->Address);
            Assert.True(table.Owns((nint)table.Get(many[^1])));
            Assert.True(table.Owns(many[^1]));
            using var other = new HandleTable(OsMemory.Default);
            other.Pop(one);
            Assert.False(table.Owns((nint)other.Get(one[0])));
            Assert.False(table.Owns(one[0]));
            Assert.NotEqual(table.Owner, other.Owner);
            // 16-byte entries, whole chunks: at least 4 (more only if a recycled chunk held retired entries).
            int chunks = many.Select(i => i >> 12).Distinct().Count();
            Assert.True(chunks >= 4, $"{chunks} chunks");
            Assert.Equal((long)chunks * HandleTable.ChunkEntries * 16, table.MetadataBytes);
        }
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
        uint generation = HandleBits.Generation(h.Value);   // 0 in a new chunk; a recycled chunk's entries go on counting
        for (int round = 0; round < 50; round++)
        {
            Assert.Equal(index, HandleBits.Index(h.Value));                       // the entry is reused...
            Assert.Equal(generation + (uint)round, HandleBits.Generation(h.Value)); // ...one generation later
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
    public void AHandleCarriesItsGenerationAndIndexAndNoHeapTag()
    {
        ulong v = HandleBits.Encode(0x12345678, 0xDEADBEEF);
        Assert.Equal(0x12345678DEADBEEFUL, v);
        Assert.Equal(0x12345678u, HandleBits.Generation(v));
        Assert.Equal(0xDEADBEEFu, HandleBits.Index(v));
        Assert.Equal(uint.MaxValue, HandleBits.Generation(HandleBits.Encode(uint.MaxValue, 1)));   // all 32 bits are kept
    }

    [Fact]
    public void EntriesOfFreedRunsAreReusedToo()
    {
        using NativeHeap heap = TestHeaps.Small(caches: false);
        var handles = Enumerable.Range(0, 100).Select(_ => heap.Allocate(70_000)).ToList();
        var runEntries = handles.Select(h => HandleBits.Index(h.Value)).ToHashSet();
        handles.ForEach(heap.Free);
        handles = Enumerable.Range(0, 100).Select(_ => heap.Allocate(50)).ToList();
        Assert.True(runEntries.SetEquals(handles.Select(h => HandleBits.Index(h.Value))));   // the runs' entries, no new one
        handles.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }
}
