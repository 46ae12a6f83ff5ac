using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>The validator's poison check on the portable back end, whose arena is one C allocation: a pageblock below
/// a zone's frontier that was never committed holds whatever that allocation held (its first commit zeroes it), so
/// the heap never wrote it and it is no use-after-free.</summary>
public sealed unsafe class PortablePoisonValidatorTests
{
    [Fact]
    public void APageblockNeverCommittedIsNotReadAsFreedMemory()
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 16L << 20, PageblockPages = 64, MovableZonePercent = 50, PoisonFreedMemory = true, ForcePortableMemory = true,
        });
        BlockHandle h = heap.Allocate(100);   // the frontier passes a max-order block (two pageblocks); one is committed
        var zones = new[] { heap.NormalZone, heap.Movable }.Where(z => z != null).ToList();
        int written = 0;
        foreach (var z in zones)
            for (int page = z!.Start; page < z.Frontier; page += heap.Map.PageblockPages)
            {
                int pb = heap.Map.PageblockOf(page);
                if (heap.Memory.IsCommitted(pb)) continue;
                // What a C allocator may hand out: memory another allocation used before.
                new Span<byte>((void*)heap.Map.AddressOf(page), heap.Map.PageSize).Fill(0x5A);
                written++;
            }
        Assert.True(written > 0, "a pageblock below a frontier was never committed");
        List<string> problems = heap.Validate();
        Assert.True(problems.Count == 0, "heap validator: " + string.Join("; ", problems.Take(5)));
        heap.Free(h);
    }
}
