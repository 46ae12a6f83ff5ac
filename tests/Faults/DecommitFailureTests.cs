using System.Runtime.InteropServices;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>Decommitting many scattered pageblocks keeps the process's mappings bounded, never claims more than the
/// OS did, and never leaves the process unable to get memory; a decommit or purge the OS refuses is counted, leaves
/// its memory committed and accounted, and raises nothing.</summary>
[Collection(ProcessWideResources.Name)]
public sealed unsafe partial class DecommitFailureTests(ITestOutputHelper output)
{
    private const int PageblockPages = 16;                 // 64 KiB pageblocks
    private const long PageblockBytes = PageblockPages * 4096L;
    private const int Pageblocks = 140_000;                // every other one freed: 70,000 holes, past vm.max_map_count
    private const int MapLimit = 60_000;

    /// <summary>On the code this test was written against, the mapping splits past vm.max_map_count, mprotect fails
    /// unnoticed and the runtime aborts on its next mmap: hence the trait.</summary>
    [LinuxFact("/proc/self/maps, mincore and vm.max_map_count: the subject is Linux's limit on mappings")]
    [Trait(ProcessFatal.Trait, ProcessFatal.Value)]
    public void ReleasingEveryOtherOfManyPageblocksKeepsMappingsBoundedCountsOnlyRealDecommitsAndKeepsTheProcessWorking()
    {
        int limit = Math.Min(MapLimit, ProcSelf.MaxMapCount() * 9 / 10);
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = Pageblocks * PageblockBytes, PageblockPages = PageblockPages, MovableZonePercent = 100,
            DirectCompaction = false, UseHugePages = false,
        });
        // 64 KiB blocks are page runs of exactly one pageblock; allocating one commits its pageblock without touching it.
        var blocks = new List<BlockHandle>(Pageblocks);
        while (heap.TryAllocate(PageblockBytes, BlockKind.Movable, out BlockHandle h)) blocks.Add(h);
        Assert.True(blocks.Count > Pageblocks * 9 / 10, $"only {blocks.Count} blocks fit");
        // The blocks about to be freed get one touched page each, so that their release is visible as residency.
        var freed = new List<nint>();
        for (int i = 0; i < blocks.Count; i += 2)
        {
            using PinScope pin = heap.Pin(blocks[i]);
            pin.Span[0] = 1;
            freed.Add(pin.Address);
        }
        HeapStatistics before = heap.GetStatistics();
        for (int i = 0; i < blocks.Count; i += 2) heap.Free(blocks[i]);

        heap.ReleaseFreeMemory();

        int maps = ProcSelf.MapCount();
        HeapStatistics after = heap.GetStatistics();
        long claimed = after.DecommittedBytes - before.DecommittedBytes + after.PurgedBytes - before.PurgedBytes;
        long released = freed.Count(a => !IsResident(a)) * PageblockBytes;
        output.WriteLine($"{blocks.Count} pageblocks committed, {freed.Count} freed; {maps} mappings (limit {limit}); decommitted+purged {claimed:N0} B; freed pageblocks no longer resident {released:N0} B");

        // The process still gets memory from the OS: managed arrays, a collection, a thread (a stack mapping).
        var arrays = Enumerable.Range(0, 64).Select(_ => new byte[1 << 20]).ToList();
        GC.Collect();
        var thread = new Thread(() => arrays.Add(new byte[1 << 20]));
        thread.Start();
        thread.Join();
        Assert.True(maps < limit, $"{maps} mappings after the release: the decommits split the arena's mapping");
        Assert.True(claimed <= released, $"the statistics claim {claimed:N0} B returned to the OS; only {released:N0} B were");
        Assert.True(after.CommittedBytes >= before.CommittedBytes - released, "committed bytes fell by more than was released");
        // And the heap keeps serving: the released pageblocks are committed again.
        for (int i = 0; i < blocks.Count; i += 2) blocks[i] = heap.Allocate(PageblockBytes);
        using (PinScope pin = heap.Pin(blocks[0])) { pin.Span.Fill(7); Assert.Equal(7, pin.Span[^1]); }
        blocks.ForEach(heap.Free);
        GC.KeepAlive(arrays);
    }

    [Fact]
    public void ARefusedDecommitIsCountedLeavesItsPageblockCommittedAndAccountedAndALaterReleaseTakesIt()
    {
        var os = new FaultyOsMemory();
        using NativeHeap heap = TestHeaps.Small(os: os);
        long pageblockBytes = (long)heap.Map.PageblockPages << heap.Map.PageShift;
        var blocks = Enumerable.Range(0, 200).Select(_ => heap.Allocate(40_000)).ToList();
        long committed = heap.GetStatistics().CommittedBytes;
        Assert.True(committed >= 2 * pageblockBytes);
        blocks.ForEach(heap.Free);

        os.RefuseInArena(heap, os.DecommitCall, times: 1);   // every pageblock is wholly free: the refused call is a decommit
        long released = heap.ReleaseFreeMemory();

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(1, stats.DecommitFailures);
        Assert.Equal(committed - pageblockBytes, released);                  // all but the refused pageblock,
        Assert.Equal(pageblockBytes, stats.CommittedBytes);                  // which is still committed, and counted so
        Assert.Equal(released, stats.DecommittedBytes);
        Assert.Equal(0, stats.PurgedBytes);                                  // and not purged either: it waits whole
        TestHeaps.AssertValid(heap);

        // The next release decommits it; allocations recommit what they need.
        Assert.Equal(pageblockBytes, heap.ReleaseFreeMemory());
        stats = heap.GetStatistics();
        Assert.Equal(0, stats.CommittedBytes);
        Assert.Equal(committed, stats.DecommittedBytes);
        Assert.Equal(1, stats.DecommitFailures);
        AssertAllocationsWork(heap);
    }

    [Fact]
    public void ARefusedDecommitInTheBackgroundTrimIsCountedAndRaisesNothing()
    {
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, PageblockPages = 64, DecommitDelay = TimeSpan.Zero }, os);
        long pageblockBytes = (long)heap.Map.PageblockPages << heap.Map.PageShift;
        var blocks = Enumerable.Range(0, 200).Select(_ => heap.Allocate(40_000)).ToList();
        blocks.ForEach(heap.Free);
        heap.ReleaseFreeMemory();       // drains the caches and empty slabs; nothing stays committed
        blocks = Enumerable.Range(0, 200).Select(_ => heap.Allocate(40_000)).ToList();
        long committed = heap.GetStatistics().CommittedBytes;
        blocks.ForEach(heap.Free);

        os.RefuseInArena(heap, os.DecommitCall, times: 1);
        CompactionStatistics step = heap.RunCompactionStep(TimeSpan.FromSeconds(1));

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(1, stats.DecommitFailures);
        Assert.Equal(committed - pageblockBytes, step.BytesDecommitted);
        Assert.Equal(pageblockBytes, stats.CommittedBytes);
        TestHeaps.AssertValid(heap);
        Assert.Equal(pageblockBytes, heap.RunCompactionStep(TimeSpan.FromSeconds(2)).BytesDecommitted);
        Assert.Equal(0, heap.GetStatistics().CommittedBytes);
        AssertAllocationsWork(heap);
    }

    [Fact]
    public void ARefusedPurgeIsCountedAndNotReportedAsPurged()
    {
        var os = new FaultyOsMemory();
        using NativeHeap heap = TestHeaps.Small(movablePercent: 100, os: os);
        var blocks = Enumerable.Range(0, 400).Select(_ => heap.Allocate(30_000)).ToList();
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        var kept = blocks.Where((_, i) => i % 8 == 0).ToList();   // one block in eight: every pageblock stays in use
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);
        long committed = heap.GetStatistics().CommittedBytes;

        os.RefuseInArena(heap, os.PurgeCall, times: 1);   // no pageblock is wholly free: the first to be refused is a purge
        long released = heap.ReleaseFreeMemory();

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(1, stats.DecommitFailures);
        Assert.Equal(0, stats.DecommittedBytes);
        Assert.Equal(stats.PurgedBytes, released);
        Assert.Equal(committed, stats.CommittedBytes);
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
        AssertAllocationsWork(heap);
        kept.ForEach(heap.Free);
    }

    /// <summary>The heap still serves blocks whose bytes can be written and read back.</summary>
    private static void AssertAllocationsWork(NativeHeap heap)
    {
        var again = Enumerable.Range(0, 50).Select(_ => heap.Allocate(40_000)).ToList();
        foreach (BlockHandle h in again) TestHeaps.Fill(heap, h);
        foreach (BlockHandle h in again) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        again.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    private static bool IsResident(nint address)
    {
        byte vec = 0;
        Assert.Equal(0, mincore(address, 4096, &vec));
        return (vec & 1) != 0;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mincore(nint addr, nuint length, byte* vec);
}
