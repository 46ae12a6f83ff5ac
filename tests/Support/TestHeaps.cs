using Compaction.Allocator;
using Compaction.Allocator.Os;

namespace Compaction.Tests;

/// <summary>Small arenas for tests: 64 MiB reserved, pageblocks of 64 pages so that few bytes make many pageblocks.</summary>
internal static class TestHeaps
{
    /// <param name="os">The OS layer the heap's system calls go through (a <see cref="FaultyOsMemory"/>); null for the
    /// real one.</param>
    public static NativeHeap Small(int movablePercent = 50, bool caches = true, long arenaBytes = 64L << 20, int pageblockPages = 64, IOsMemory? os = null)
        => new(new HeapOptions
        {
            ArenaBytes = arenaBytes,
            PageblockPages = pageblockPages,
            MovableZonePercent = movablePercent,
            PerThreadCaches = caches,
        }, os ?? OsMemory.Default);

    /// <summary>Commits <paramref name="pageblocks"/> pageblocks above what the heap uses and leaves them free (pages
    /// allocated, written and freed, never decommitted before the delay): compaction takes its destinations from
    /// committed memory only, so tests that move blocks upwards need such room.</summary>
    public static void CommitFreeSpaceAbove(NativeHeap heap, int pageblocks)
    {
        long pageblockBytes = (long)heap.Options.PageblockPages * heap.Options.PageSize;
        var runs = new List<BlockHandle>();
        for (int i = 0; i < pageblocks; i++) runs.Add(heap.Allocate(pageblockBytes));
        runs.ForEach(heap.Free);
    }

    /// <summary>Fills <paramref name="bytes"/> of <paramref name="size"/>-byte movable blocks, frees three in four and
    /// writes the pattern into the rest (returned): every slab left a quarter full.</summary>
    public static List<BlockHandle> FillAndKeepAQuarter(NativeHeap heap, long bytes, int size)
    {
        var all = new List<BlockHandle>();
        for (long b = 0; b < bytes; b += size) all.Add(heap.Allocate(size));
        var live = new List<BlockHandle>();
        for (int i = 0; i < all.Count; i++)
        {
            if (i % 4 != 0) heap.Free(all[i]);
            else { live.Add(all[i]); Fill(heap, all[i]); }
        }
        return live;
    }

    public static void AssertValid(NativeHeap heap)
    {
        List<string> problems = heap.Validate();
        Assert.True(problems.Count == 0, "heap validator: " + string.Join("; ", problems.Take(10)));
    }

    /// <summary>The byte pattern written into a block: derived from its handle and the offset.</summary>
    public static byte Pattern(BlockHandle h, int offset) => (byte)((h.Value * 0x9E3779B97F4A7C15UL >> 56) ^ (ulong)offset * 31);

    public static void Fill(NativeHeap heap, BlockHandle h)
    {
        using PinScope pin = heap.Pin(h);
        Span<byte> span = pin.Span;
        for (int i = 0; i < span.Length; i++) span[i] = Pattern(h, i);
    }

    public static int CountCorrupt(NativeHeap heap, BlockHandle h)
    {
        using PinScope pin = heap.Pin(h);
        Span<byte> span = pin.Span;
        int bad = 0;
        for (int i = 0; i < span.Length; i++) if (span[i] != Pattern(h, i)) bad++;
        return bad;
    }
}
