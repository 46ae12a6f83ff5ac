using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>The background compactor's waste trigger (native-layout.md, "Compaction"): committed memory follows live
/// memory without any explicit call.</summary>
public sealed class WasteCompactionTests
{
    private static double Ratio(NativeHeap heap)
    {
        HeapStatistics s = heap.GetStatistics();
        return (double)s.CommittedBytes / Math.Max(1, s.LiveBytes);
    }

    private static (NativeHeap heap, List<BlockHandle> live) Fragmented(int blockSize, long bytes, HeapOptions? options = null)
    {
        var heap = new NativeHeap(options ?? new HeapOptions { ArenaBytes = 256L << 20, Proactiveness = 0 });
        var all = new List<BlockHandle>();
        for (long b = 0; b < bytes; b += blockSize) all.Add(heap.Allocate(blockSize));
        var live = new List<BlockHandle>();
        for (int i = 0; i < all.Count; i++)
        {
            if (i % 2 == 0) heap.Free(all[i]);
            else { live.Add(all[i]); TestHeaps.Fill(heap, all[i]); }
        }
        return (heap, live);
    }

    /// <summary>What an explicit full compaction and release reach on the same fragmentation (the target).</summary>
    private static double ExplicitRatio(int blockSize, long bytes)
    {
        (NativeHeap twin, List<BlockHandle> live) = Fragmented(blockSize, bytes);
        using (twin)
        {
            twin.Compact();
            twin.ReleaseFreeMemory();
            double r = Ratio(twin);
            live.ForEach(twin.Free);
            return r;
        }
    }

    [Fact]
    public void BackgroundStepsAloneReachWhatAnExplicitReleaseReachesAndKeepEveryByte()
    {
        double target = ExplicitRatio(512, 48L << 20);
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(512, 48L << 20);
        using (heap)
        {
            double before = Ratio(heap);
            Assert.True(before > heap.Options.WasteHighRatio, $"ratio {before:F2} before");
            long pageblock = (long)heap.Options.PageblockPages * heap.Options.PageSize;
            int steps = 0;
            for (; steps < 5000 && Ratio(heap) > target + 2.0 * pageblock / heap.GetStatistics().LiveBytes; steps++)
                heap.RunCompactionStep(TimeSpan.FromMilliseconds(steps));
            double after = Ratio(heap);
            HeapStatistics stats = heap.GetStatistics();
            Assert.True(steps < 5000, $"ratio {before:F2} -> {after:F2} after {steps} steps; an explicit release reaches {target:F2}");
            Assert.True(stats.Compaction.WasteWakes > 0);
            Assert.True(stats.Compaction.WasteBytesMoved > 0);
            Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
            TestHeaps.AssertValid(heap);
            // The run ends (a slice that can move nothing, or the low ratio) and, below the high ratio, does not start
            // again.
            for (int i = 0; i < 200; i++) heap.RunCompactionStep(TimeSpan.FromSeconds(10 + i));
            long wakes = heap.GetStatistics().Compaction.WasteWakes;
            for (int i = 0; i < 100; i++) heap.RunCompactionStep(TimeSpan.FromSeconds(300 + i));
            Assert.Equal(wakes, heap.GetStatistics().Compaction.WasteWakes);
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void TheWasteTriggerIgnoresSmallWasteAndCanBeTurnedOff()
    {
        (NativeHeap small, List<BlockHandle> a) = Fragmented(512, 4L << 20);   // 2 MiB wasted: below WasteMinBytes
        using (small)
        {
            for (int i = 0; i < 20; i++) small.RunCompactionStep(TimeSpan.FromMilliseconds(i));
            Assert.Equal(0, small.GetStatistics().Compaction.WasteWakes);
            a.ForEach(small.Free);
        }
        (NativeHeap off, List<BlockHandle> b) = Fragmented(512, 48L << 20, new HeapOptions { ArenaBytes = 256L << 20, Proactiveness = 0, WasteHighRatio = 0 });
        using (off)
        {
            for (int i = 0; i < 20; i++) off.RunCompactionStep(TimeSpan.FromMilliseconds(i));
            Assert.Equal(0, off.GetStatistics().Compaction.WasteWakes);
            Assert.Equal(0, off.GetStatistics().Compaction.WasteBytesMoved);
            b.ForEach(off.Free);
        }
    }

    [Fact]
    public void TheBackgroundThreadAloneBringsTheRatioDown()
    {
        double target = ExplicitRatio(512, 48L << 20);
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(512, 48L << 20, new HeapOptions { ArenaBytes = 256L << 20, CompactionInterval = TimeSpan.FromMilliseconds(20) });
        using (heap)
        {
            double before = Ratio(heap);
            long slack = 2L * heap.Options.PageblockPages * heap.Options.PageSize;
            heap.StartBackgroundCompaction();
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (Ratio(heap) > target + (double)slack / heap.GetStatistics().LiveBytes && DateTime.UtcNow < deadline) Thread.Sleep(20);
            heap.StopBackgroundCompaction();
            Assert.True(DateTime.UtcNow < deadline, $"ratio {before:F2} -> {Ratio(heap):F2} after 60 s of the background thread; an explicit release reaches {target:F2}");
            // The thread's own processor time is counted (Linux: its thread CPU clock).
            CompactionStatistics c = heap.GetStatistics().Compaction;
            if (OperatingSystem.IsLinux()) Assert.True(c.BackgroundCpuNanoseconds > 0, $"{c.BackgroundCpuNanoseconds} ns of background CPU after {c.WasteWakes} waste wakes");
            Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
            TestHeaps.AssertValid(heap);
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void CompactionCommitsNoFreshMemoryItFillsOnlyCommittedHolesAndStillEmptiesPageblocks()
    {
        (NativeHeap heap, List<BlockHandle> live) = Fragmented(512, 48L << 20, new HeapOptions { ArenaBytes = 256L << 20, Proactiveness = 0, WasteHighRatio = 0 });
        using (heap)
        {
            // Wholly free pageblocks above the fragmented ones, decommitted: the free scanner's first candidates.
            var top = new List<BlockHandle>();
            for (int i = 0; i < 16 * 1024; i++) top.Add(heap.Allocate(1024));
            top.ForEach(heap.Free);
            heap.ReleaseFreeMemory();
            long commits = heap.Memory.Commits, committed = heap.GetStatistics().CommittedBytes;
            double before = Ratio(heap);
            heap.Compact();
            Assert.Equal(commits, heap.Memory.Commits);   // no pageblock was committed to serve as a destination
            Assert.True(heap.GetStatistics().CommittedBytes <= committed);
            heap.ReleaseFreeMemory();
            double after = Ratio(heap);
            Assert.True(after < before * 0.6, $"ratio {before:F2} -> {after:F2}: compaction into committed holes alone still empties pageblocks");
            Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
            TestHeaps.AssertValid(heap);
            live.ForEach(heap.Free);
        }
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(1.5)]
    public void BadWasteOptionsAreRejectedByName(double low)
    {
        var e = Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { WasteHighRatio = 1.2, WasteLowRatio = low }));
        Assert.Equal(nameof(HeapOptions.WasteLowRatio), e.ParamName);
        Assert.Equal(nameof(HeapOptions.CompactionCpuShare), Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { CompactionCpuShare = 0 })).ParamName);
        Assert.Equal(nameof(HeapOptions.CompactionSliceTime), Assert.Throws<ArgumentException>(() => new NativeHeap(new HeapOptions { CompactionSliceTime = TimeSpan.Zero })).ParamName);
    }
}
