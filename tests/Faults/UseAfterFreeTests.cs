using System.Diagnostics.Tracing;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Pages;

namespace Compaction.Tests;

/// <summary>
/// <see cref="HeapOptions.PoisonFreedMemory"/>: free storage holds a poison pattern, so a write through a pointer kept
/// after its block was freed, or after its pin ended while compaction moved the block, is found when the storage is
/// handed out again (counted, raised as an event, the heap left consistent) and by the validator while it is free;
/// and correct code never gets a report, whatever purges, decommits, compactions, drains and long-term pins did.
/// </summary>
public unsafe class UseAfterFreeTests
{
    private static NativeHeap PoisonedHeap(bool portable = false, long arenaBytes = 64L << 20) => new(new HeapOptions
    {
        ArenaBytes = arenaBytes, PageblockPages = 64, MovableZonePercent = 75, PoisonFreedMemory = true,
        ForcePortableMemory = portable,
    });

    private static nint AddressOf(NativeHeap heap, BlockHandle h)
    {
        using PinScope pin = heap.Pin(h);
        return pin.Address;
    }

    private static List<string> UseAfterFreeProblems(NativeHeap heap) => heap.Validate().Where(p => p.StartsWith("use after free", StringComparison.Ordinal)).ToList();

    /// <summary>A slab block (kept in the thread's cache), a run a cache keeps (64 KiB), and a run too long for any
    /// cache (2 MiB, back to its zone): each freed, written through the stale pointer, found by the validator, then
    /// found again by the allocation that reuses the storage, which succeeds and leaves the heap valid.</summary>
    [Theory]
    [InlineData(100)]
    [InlineData(64 * 1024)]
    [InlineData(2 * 1024 * 1024)]
    public void AWriteThroughAStalePointerAfterFreeIsFoundByTheValidatorAndOnReuse(int size)
    {
        using NativeHeap heap = PoisonedHeap();
        BlockHandle h = heap.Allocate(size);
        TestHeaps.Fill(heap, h);
        nint stale = AddressOf(heap, h);
        heap.Free(h);
        Assert.True(*(byte*)stale == FreePoison.Pattern && *(byte*)(stale + size - 1) == FreePoison.Pattern, "freed storage holds the poison");
        TestHeaps.AssertValid(heap);

        *(long*)(stale + 8) = 0x1122334455667788;   // the use after free: 8 bytes, none of them the pattern
        List<string> problems = UseAfterFreeProblems(heap);
        Assert.Single(problems);
        Assert.Contains($"use after free at 0x{stale + 8:x} (8 bytes changed)", problems[0]);
        Assert.Equal(0, heap.GetStatistics().UseAfterFreeDetections);   // the validator reports, it does not count

        BlockHandle again = heap.Allocate(size);
        Assert.Equal(stale, AddressOf(heap, again));   // the same storage, handed out again
        Assert.Equal(1, heap.GetStatistics().UseAfterFreeDetections);
        TestHeaps.AssertValid(heap);                   // live now: nothing left to report, and the heap is consistent
        heap.Free(again);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>The same through a thread-bound context's free, and the event a listener receives.</summary>
    [Fact]
    public void AStaleWriteAfterAContextFreeRaisesTheEventWithTheChangedAddress()
    {
        using NativeHeap heap = PoisonedHeap();
        using var listener = new UseAfterFreeListener();
        HeapContext ctx = heap.GetThreadContext();
        BlockHandle h = ctx.Allocate(48);
        nint stale = AddressOf(heap, h);
        ctx.Free(h);
        *(byte*)(stale + 40) = 7;
        BlockHandle again = ctx.Allocate(48);
        Assert.Equal(1, heap.GetStatistics().UseAfterFreeDetections);
        Assert.Contains((long)(stale + 40), listener.Addresses);
        ctx.Free(again);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>A pointer kept after its pin ended, while the migrator moved the block (a slab slot to another slab,
    /// a run to new pages): the write lands in the old, freed storage, which the validator reports; the block itself
    /// keeps every byte at its new place.</summary>
    [Theory]
    [InlineData(200)]
    [InlineData(40_000)]
    public void AWriteThroughAPointerKeptAfterItsPinEndedIsFoundWhenTheMigratorMovedTheBlock(int size)
    {
        using NativeHeap heap = PoisonedHeap();
        var neighbours = Enumerable.Range(0, 8).Select(_ => heap.Allocate(size)).ToList();   // a slab to move into
        BlockHandle h = heap.Allocate(size);
        TestHeaps.Fill(heap, h);
        nint kept = AddressOf(heap, h);   // the pin ended; the pointer did not
        Assert.Equal(MigrateResult.Success, heap.Migrate(h));
        Assert.NotEqual(kept, AddressOf(heap, h));
        TestHeaps.AssertValid(heap);

        *(int*)(kept + 16) = 0x01020304;
        List<string> problems = UseAfterFreeProblems(heap);
        Assert.Single(problems);
        Assert.Contains($"use after free at 0x{kept + 16:x} (4 bytes changed)", problems[0]);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        neighbours.ForEach(heap.Free);
        heap.Free(h);
    }

    /// <summary>The same through <see cref="NativeHeap.Compact"/>: of many fragmented slab blocks, one the pass moved
    /// (and whose old place no live block took) is written through its old address, and the validator finds it.</summary>
    [Fact]
    public void AWriteThroughAPointerKeptAcrossACompactionIsFoundByTheValidator()
    {
        using NativeHeap heap = PoisonedHeap();
        var rng = new Random(11);
        var all = Enumerable.Range(0, 4000).Select(_ => heap.Allocate(rng.Next(64, 1024))).ToList();
        var kept = all.Where((_, i) => i % 8 == 0).ToList();
        foreach (BlockHandle h in all.Except(kept)) heap.Free(h);
        foreach (BlockHandle h in kept) TestHeaps.Fill(heap, h);
        var before = kept.ToDictionary(h => h, h => AddressOf(heap, h));
        heap.Compact();
        TestHeaps.AssertValid(heap);

        var live = kept.Select(h => (start: AddressOf(heap, h), end: AddressOf(heap, h) + (nint)heap.GetSize(h))).ToList();
        BlockHandle moved = kept.First(h => before[h] != AddressOf(heap, h) && !live.Any(b => before[h] >= b.start && before[h] < b.end));
        *(byte*)(before[moved] + 5) = 0;
        List<string> problems = UseAfterFreeProblems(heap);
        Assert.Single(problems);
        Assert.Contains($"use after free at 0x{before[moved] + 5:x} (1 bytes changed)", problems[0]);
        Assert.All(kept, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        kept.ForEach(heap.Free);
    }

    /// <summary>Correct code, every path that frees or gives memory back: churn of slab blocks and runs of every size,
    /// frees across threads, explicit compaction (consolidation and the zone pass), cache drains, the release
    /// (decommit of free pageblocks, purge of free runs: pages that read as zero), long-term pins (moves into
    /// unmovable memory), then reuse of all that memory. No detection, no validator problem, at every step; on both
    /// back ends (the portable one zeroes fresh memory at its first commit).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CorrectCodeGetsNoReportAfterPurgeDecommitCompactionDrainsAndLongTermPins(bool portable)
    {
        using NativeHeap heap = PoisonedHeap(portable, arenaBytes: 256L << 20);
        var rng = new Random(5);
        var blocks = new List<BlockHandle>();
        void Step(string what)
        {
            List<string> problems = heap.Validate();
            Assert.True(problems.Count == 0, $"after {what}: " + string.Join("; ", problems.Take(5)));
            Assert.Equal(0, heap.GetStatistics().UseAfterFreeDetections);
        }
        for (int round = 0; round < 3; round++)
        {
            for (int i = 0; i < 2000; i++)
            {
                long size = rng.Next(8) == 0 ? rng.Next(16_385, 300_000) : rng.Next(1, 16_384);
                BlockHandle h = heap.Allocate(size, rng.Next(5) == 0 ? BlockKind.Unmovable : BlockKind.Movable);
                TestHeaps.Fill(heap, h);
                blocks.Add(h);
            }
            Step("allocations");
            var freed = blocks.Where(_ => rng.Next(4) != 0).ToList();
            var other = new Thread(() => freed.Take(freed.Count / 2).ToList().ForEach(heap.Free));   // cross-thread frees
            other.Start();
            other.Join();
            freed.Skip(freed.Count / 2).ToList().ForEach(heap.Free);
            blocks = blocks.Except(freed).ToList();
            Step("frees");
            heap.Compact();
            Step("compaction");
            heap.ReleaseFreeMemory();
            Step("release (decommit and purge)");
            Assert.True(heap.GetStatistics().DecommittedBytes + heap.GetStatistics().PurgedBytes > 0, "the release gave memory back");
            var pins = blocks.Where(_ => rng.Next(10) == 0).Select(heap.PinLongTerm).ToList();
            Step("long-term pins");
            pins.ForEach(p => p.Dispose());
        }
        Assert.All(blocks, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        blocks.ForEach(heap.Free);
        Assert.True(heap.AllPageblocksFree());
        Step("freeing everything");
    }

    /// <summary>Without the option nothing is filled or checked: freed storage keeps what was written there.</summary>
    [Fact]
    public void WithoutTheOptionFreedStorageIsNeitherFilledNorChecked()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(64);
        nint stale = AddressOf(heap, h);
        *(long*)(stale + 8) = 42;
        heap.Free(h);
        Assert.Equal(42, *(long*)(stale + 8));
        *(long*)(stale + 16) = 43;
        BlockHandle again = heap.Allocate(64);
        Assert.Equal(stale, AddressOf(heap, again));
        Assert.Equal(0, heap.GetStatistics().UseAfterFreeDetections);
        heap.Free(again);
        TestHeaps.AssertValid(heap);
    }

    private sealed class UseAfterFreeListener : EventListener
    {
        public readonly List<long> Addresses = [];

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == NativeHeapEventSource.SourceName) EnableEvents(source, EventLevel.Error, NativeHeapEventSource.Keywords.Allocation);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventName != nameof(NativeHeapEventSource.UseAfterFreeDetected)) return;
            lock (Addresses) Addresses.Add((long)e.Payload![1]!);
        }
    }
}
