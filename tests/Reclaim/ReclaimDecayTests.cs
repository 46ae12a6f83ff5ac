using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>Free memory going back to the OS by itself (native-layout.md, "Reclaim"): purged free runs are marked and
/// never purged twice, free runs inside used pageblocks decay after the delay, and the retained-bytes cap.</summary>
public sealed class ReclaimDecayTests
{
    private const int Run = 64 * 1024;   // 16 pages: each freed run is one order-4 buddy block

    /// <summary>A heap of 64 KiB runs with every other one freed: free runs inside pageblocks that stay in use.
    /// Only the background thread's own steps (driven by hand) may give memory back; no compaction.</summary>
    private static (NativeHeap heap, List<BlockHandle> live, int freed) Holey(HeapOptions? options = null)
    {
        var heap = new NativeHeap(options ?? new HeapOptions
        {
            ArenaBytes = 64L << 20, WasteHighRatio = 0, Proactiveness = 0, DecommitDelay = TimeSpan.FromSeconds(10),
        });
        var all = new List<BlockHandle>();
        for (int i = 0; i < 256; i++) all.Add(heap.Allocate(Run));
        var live = new List<BlockHandle>();
        int freed = 0;
        for (int i = 0; i < all.Count; i++)
        {
            if (i % 2 == 0) { heap.Free(all[i]); freed++; }
            else { TestHeaps.Fill(heap, all[i]); live.Add(all[i]); }
        }
        return (heap, live, freed);
    }

    private static void AssertIntact(NativeHeap heap, List<BlockHandle> live)
    {
        foreach (BlockHandle h in live) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AReleasePurgesEachFreeRunOnceAndReuseMakesItResidentAgain()
    {
        (NativeHeap heap, List<BlockHandle> live, int freed) = Holey();
        using (heap)
        {
            long first = heap.ReleaseFreeMemory();
            HeapStatistics s = heap.GetStatistics();
            Assert.Equal((long)freed * Run, first);
            Assert.Equal(first, s.PurgedFreeBytes);
            Assert.Equal(0, heap.ReleaseFreeMemory());                       // nothing new to purge: no system call
            Assert.Equal(first, heap.GetStatistics().PurgedBytes);
            BlockHandle again = heap.Allocate(Run);                          // takes one purged run
            Assert.Equal(first - Run, heap.GetStatistics().PurgedFreeBytes);
            TestHeaps.Fill(heap, again);
            live.Add(again);
            AssertIntact(heap, live);
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void FreeRunsUntouchedForOneToTwoDelaysArePurgedWithoutAnyCall()
    {
        (NativeHeap heap, List<BlockHandle> live, int freed) = Holey();
        using (heap)
        {
            heap.RunCompactionStep(TimeSpan.FromSeconds(1));
            Assert.Equal(0, heap.GetStatistics().PurgedFreeBytes);          // younger than the delay
            heap.RunCompactionStep(TimeSpan.FromSeconds(11));               // the sweep marks them aged
            Assert.Equal(0, heap.GetStatistics().PurgedFreeBytes);
            // One run reused and freed again between the sweeps: linked anew, so young again.
            BlockHandle touched = heap.Allocate(Run);
            heap.Free(touched);
            heap.RunCompactionStep(TimeSpan.FromSeconds(15));               // no sweep before the delay has passed
            Assert.Equal(0, heap.GetStatistics().PurgedFreeBytes);
            heap.RunCompactionStep(TimeSpan.FromSeconds(22));
            Assert.Equal((long)(freed - 1) * Run, heap.GetStatistics().PurgedFreeBytes);
            heap.RunCompactionStep(TimeSpan.FromSeconds(33));               // the touched one, a delay later
            Assert.Equal((long)freed * Run, heap.GetStatistics().PurgedFreeBytes);
            AssertIntact(heap, live);
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void AboveTheRetainedCapFreeMemoryGoesBackAtTheNextWake()
    {
        (NativeHeap heap, List<BlockHandle> live, int freed) = Holey(new HeapOptions
        {
            ArenaBytes = 64L << 20, WasteHighRatio = 0, Proactiveness = 0, DecommitDelay = TimeSpan.FromSeconds(10),
            RetainedBytesLimit = 1L << 20,
        });
        using (heap)
        {
            heap.RunCompactionStep(TimeSpan.FromSeconds(1));
            Assert.Equal((long)freed * Run, heap.GetStatistics().PurgedFreeBytes);
            AssertIntact(heap, live);
            live.ForEach(heap.Free);
        }
    }

    [Fact]
    public void TheRetainedCapStartsCompactionBelowTheWasteRatio()
    {
        var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20, Proactiveness = 0, WasteHighRatio = 50, RetainedBytesLimit = 4L << 20 });
        using (heap)
        {
            var all = new List<BlockHandle>();
            for (int i = 0; i < 64 * 1024; i++) all.Add(heap.Allocate(512));
            var live = new List<BlockHandle>();
            for (int i = 0; i < all.Count; i++)
            {
                if (i % 2 == 0) heap.Free(all[i]);
                else { TestHeaps.Fill(heap, all[i]); live.Add(all[i]); }
            }
            // 2x live: far below the waste ratio of 50, but 16 MiB retained against a cap of 4 MiB.
            long Retained() { HeapStatistics s = heap.GetStatistics(); return s.CommittedBytes - s.PurgedFreeBytes - s.LiveBytes; }
            long before = Retained();
            Assert.True(before > 8L << 20, $"{before} bytes retained before");
            int steps = 0;
            for (; steps < 5000 && Retained() > heap.Options.RetainedBytesLimit; steps++)
                heap.RunCompactionStep(TimeSpan.FromMilliseconds(steps));
            HeapStatistics stats = heap.GetStatistics();
            Assert.True(steps < 5000, $"{Retained()} bytes retained after {steps} steps");
            Assert.True(stats.Compaction.WasteWakes > 0 && stats.Compaction.WasteBytesMoved > 0);
            AssertIntact(heap, live);
            live.ForEach(heap.Free);
        }
    }
}

/// <summary>Huge pages only where they do not inflate resident memory: a pageblock whose free pages are purged is
/// taken out of khugepaged's reach (MADV_NOHUGEPAGE), and gets huge pages back when decommitted or dense again. The
/// kernel's own view is read from /proc/self/smaps (VmFlags "hg" / "nh").</summary>
public sealed class HugePageAdviceTests
{
    /// <summary>The VmFlags of the mapping that holds <paramref name="address"/>, or null off Linux.</summary>
    private static string? VmFlags(nint address)
    {
        if (!File.Exists("/proc/self/smaps")) return null;
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-');
            if (dash > 0 && line.IndexOf(' ') > dash && ulong.TryParse(line[..dash], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out ulong lo))
            {
                string rest = line[(dash + 1)..line.IndexOf(' ')];
                ulong hi = ulong.Parse(rest, System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
                inside = (ulong)address >= lo && (ulong)address < hi;
                continue;
            }
            if (inside && line.StartsWith("VmFlags:", StringComparison.Ordinal)) return line;
        }
        return null;
    }

    [LinuxFact]
    public void PurgedPageblocksLeaveHugePagesAndGetThemBackWhenDecommittedOrDense()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, WasteHighRatio = 0, Proactiveness = 0, DecommitDelay = TimeSpan.Zero });
        var runs = new List<BlockHandle>();
        for (int i = 0; i < 32; i++) runs.Add(heap.Allocate(64 * 1024));   // exactly one 2 MiB pageblock
        nint first;
        using (PinScope p = heap.Pin(runs[0])) unsafe { fixed (byte* b = p.Span) first = (nint)b; }
        string? before = VmFlags(first);
        Assert.Contains(" hg", before);
        for (int i = 1; i < runs.Count; i += 2) heap.Free(runs[i]);
        heap.ReleaseFreeMemory();
        Assert.Equal(1, heap.GetStatistics().SmallPagePageblocks);
        Assert.Contains(" nh", VmFlags(first));
        Assert.DoesNotContain(" hg", VmFlags(first));

        // Dense again: the sweep gives the advice back.
        for (int i = 1; i < runs.Count; i += 2) runs[i] = heap.Allocate(64 * 1024);
        heap.RunCompactionStep(TimeSpan.FromSeconds(1));
        Assert.Equal(0, heap.GetStatistics().SmallPagePageblocks);
        Assert.Contains(" hg", VmFlags(first));

        // Sparse again, then wholly free and decommitted: the advice comes back with the decommit.
        for (int i = 1; i < runs.Count; i += 2) heap.Free(runs[i]);
        heap.ReleaseFreeMemory();
        Assert.Contains(" nh", VmFlags(first));
        for (int i = 0; i < runs.Count; i += 2) heap.Free(runs[i]);
        heap.ReleaseFreeMemory();
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(0, s.SmallPagePageblocks);
        Assert.Equal(0, s.CommittedBytes);
        Assert.Contains(" hg", VmFlags(first));
        TestHeaps.AssertValid(heap);
    }

    [LinuxFact]
    public void WithHugePagesOffNoAdviceIsGiven()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, UseHugePages = false, WasteHighRatio = 0, Proactiveness = 0 });
        var runs = new List<BlockHandle>();
        for (int i = 0; i < 32; i++) runs.Add(heap.Allocate(64 * 1024));
        for (int i = 1; i < runs.Count; i += 2) heap.Free(runs[i]);
        Assert.True(heap.ReleaseFreeMemory() > 0);
        Assert.Equal(0, heap.GetStatistics().SmallPagePageblocks);
        for (int i = 0; i < runs.Count; i += 2) heap.Free(runs[i]);
    }
}
