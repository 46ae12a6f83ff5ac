using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The waste-driven run's back-off (native-layout.md, section 9, "Waste-driven runs"): a cycle that moves blocks but
/// gives back little (pins hold every pageblock) halves the run's CPU share, at most three times, and says so; waste
/// that grows again restores the full share. Counts only, with hand-driven wakes: no timing is asserted.
/// </summary>
public sealed class WasteBackoffTests(ITestOutputHelper output)
{
    [Fact]
    public void CyclesThatGiveBackLittleLowerTheShareAndGrownWasteRestoresIt()
    {
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 90, Proactiveness = 0,
            WasteHighRatio = 1.2, WasteLowRatio = 1.1, WasteMinBytes = 1L << 20, DecommitDelay = TimeSpan.FromHours(1),
        });
        long pageblock = (long)heap.Options.PageblockPages * heap.Options.PageSize;
        var rng = new Random(7);
        var blocks = new List<BlockHandle>();
        for (long b = 0; b < (16L << 20); b += 256) blocks.Add(heap.Allocate(256));
        // Three quarters freed at random; one survivor of every pageblock held by a pin, so that compaction moves the
        // others about (consolidation) but can empty no pageblock.
        var survivors = new List<BlockHandle>();
        foreach (BlockHandle h in blocks)
        {
            if (rng.Next(4) != 0) heap.Free(h);
            else { survivors.Add(h); TestHeaps.Fill(heap, h); }
        }
        var pins = new List<BlockPin>();
        var pinnedPageblocks = new HashSet<long>();
        foreach (BlockHandle h in survivors)
        {
            BlockPin pin = heap.AcquirePin(h);
            if (pinnedPageblocks.Add(pin.Address / pageblock)) pins.Add(pin);
            else pin.Dispose();
        }
        var more = new List<BlockHandle>();
        try
        {
            for (int i = 0; i < 2000 && heap.GetStatistics().Compaction.WasteBackoffs < 3; i++) heap.RunCompactionStep(TimeSpan.FromMilliseconds(i));
            CompactionStatistics c = heap.GetStatistics().Compaction;
            output.WriteLine($"{pins.Count} pageblocks pinned; waste wakes {c.WasteWakes}, moved {c.WasteBytesMoved:N0} B, backoffs {c.WasteBackoffs}");
            Assert.True(c.WasteBytesMoved > 0, "the run moved blocks");
            // Lowered at least once; how many cycles move anything depends on how the slices cut the work (a cycle
            // that moves nothing ends the run instead), but never more than three times: an eighth is the floor.
            Assert.InRange(c.WasteBackoffs, 1, 3);
            for (int i = 0; i < 200; i++) heap.RunCompactionStep(TimeSpan.FromMilliseconds(3000 + i));
            Assert.InRange(heap.GetStatistics().Compaction.WasteBackoffs, 1, 3);
            Assert.Equal(0, heap.GetStatistics().Compaction.WasteShareRestores);

            // More waste: another 32 MiB allocated (more than the holes hold) and three quarters of it freed. The run
            // gets its full share back.
            for (long b = 0; b < (32L << 20); b += 256) more.Add(heap.Allocate(256));
            for (int i = 0; i < more.Count; i++) if (i % 4 != 0) heap.Free(more[i]);
            for (int i = 0; i < 200 && heap.GetStatistics().Compaction.WasteShareRestores == 0; i++) heap.RunCompactionStep(TimeSpan.FromMilliseconds(4000 + i));
            CompactionStatistics after = heap.GetStatistics().Compaction;
            output.WriteLine($"after more waste: backoffs {after.WasteBackoffs}, restores {after.WasteShareRestores}, wakes {after.WasteWakes}");
            Assert.True(after.WasteShareRestores >= 1, "grown waste restores the share");
        }
        finally
        {
            foreach (BlockPin p in pins) p.Dispose();
        }
        foreach (BlockHandle h in survivors) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        survivors.ForEach(heap.Free);
        for (int i = 0; i < more.Count; i += 4) heap.Free(more[i]);
        TestHeaps.AssertValid(heap);
    }
}
