using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>Reserving address space costs memory and work in proportion to what is used, not to what is reserved,
/// so a service can reserve far more than it needs. Counts and bytes only: speed belongs to the benchmarks.</summary>
[Collection(ProcessWideResources.Name)]
public sealed class ReservationCostTests(ITestOutputHelper output)
{
    private const long OneTebibyte = 1L << 40;
    private const long ResidentGrowthLimit = 64L << 20;

    [Fact]
    public void BuildingAHeapThatReservesOneTebibyteMakesLessThan64MebibytesResident()
    {
        if (!OperatingSystem.IsLinux()) { output.WriteLine("skipped: reads VmRSS from /proc/self/status (Linux only)"); return; }
        GC.Collect();
        long before = ProcSelf.ResidentBytes();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = OneTebibyte });
        long after = ProcSelf.ResidentBytes();
        output.WriteLine($"VmRSS {before >> 20} MiB -> {after >> 20} MiB building a 1 TiB heap");
        Assert.True(after - before < ResidentGrowthLimit, $"building the heap made {(after - before) >> 20} MiB resident");
        BlockHandle h = heap.Allocate(100);
        heap.Free(h);
    }

    [Fact]
    public void TheMetadataANearlyEmptyOneTebibyteHeapReportsFollowsItsUseNotItsReservation()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = OneTebibyte });
        var blocks = Enumerable.Range(0, 1000).Select(i => heap.Allocate(16 + i % 2000, (BlockKind)(i & 1))).ToList();
        HeapStatistics stats = heap.GetStatistics();
        output.WriteLine($"metadata {stats.MetadataBytes:N0} B for {stats.CommittedBytes:N0} B committed of {stats.ReservedBytes:N0} B reserved");
        Assert.True(stats.MetadataBytes < ResidentGrowthLimit, $"the heap reports {stats.MetadataBytes >> 20} MiB of metadata");
        blocks.ForEach(heap.Free);
    }

    [Fact]
    public void CompactingANearlyEmptyOneTebibyteHeapScansPagesInProportionToUse()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = OneTebibyte });
        var rng = new Random(3);
        var blocks = Enumerable.Range(0, 400).Select(i => heap.Allocate(i % 8 == 0 ? rng.Next(20_000, 200_000) : rng.Next(16, 2000))).ToList();
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        var kept = blocks.Where((_, i) => i % 2 == 0).ToList();
        foreach (BlockHandle h in blocks.Where((_, i) => i % 2 == 1)) heap.Free(h);
        HeapStatistics stats = heap.GetStatistics();
        long usedPageblocks = (stats.CommittedBytes + ((long)stats.PageSize * stats.PageblockPages - 1)) / ((long)stats.PageSize * stats.PageblockPages);
        long limit = 64L * stats.PageblockPages;

        CompactionStatistics run = heap.Compact();

        output.WriteLine($"{usedPageblocks} pageblocks committed; scanned {run.CompactMigrateScanned:N0} pages (migrate) + {run.CompactFreeScanned:N0} (free); limit {limit:N0}");
        Assert.True(usedPageblocks < 16, $"the blocks committed {usedPageblocks} pageblocks: the test's premise (a nearly empty heap) does not hold");
        Assert.True(run.CompactMigrateScanned + run.CompactFreeScanned < limit,
            $"Compact() scanned {run.CompactMigrateScanned + run.CompactFreeScanned:N0} pages of a heap using {usedPageblocks} pageblocks");
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        kept.ForEach(heap.Free);
    }
}
