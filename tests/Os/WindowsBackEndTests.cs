using Compaction.Allocator;
using Compaction.Allocator.Os;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// The Windows back end's semantics, run on Linux: an OS layer that reports <see cref="OsBackEnd.Windows"/> and does
/// what VirtualFree(MEM_DECOMMIT) does (the pages go and the range becomes inaccessible: madvise DONTNEED, then
/// mprotect PROT_NONE), so that every path <see cref="ArenaMemory"/> takes only on Windows runs here: a decommit
/// through Protect(none), a commit of a decommitted pageblock through Protect(read-write), a validator that never
/// reads a decommitted pageblock (it would fault), and the refusals of each mapped onto the same counters and
/// exceptions as on Linux. The real <see cref="WindowsOsMemory"/> runs under wine64 in scripts/platforms.sh.
/// </summary>
[Collection(ProcessWideResources.Name)]
public sealed class WindowsBackEndTests(ITestOutputHelper output)
{
    /// <summary>Windows semantics over the real Linux calls, with refusals on demand.</summary>
    private sealed class WindowsLikeOsMemory : IOsMemory
    {
        private readonly LinuxOsMemory _real = LinuxOsMemory.Instance;
        public int Commits, Decommits, Discards, HugePageCalls;
        public bool RefuseDecommits, RefuseCommits;

        public OsBackEnd BackEnd => OsBackEnd.Windows;

        public nint Map(nuint bytes, bool readWrite, out int errno) => _real.Map(bytes, readWrite, out errno);

        public int Protect(nint address, nuint bytes, bool readWrite)
        {
            if (readWrite)
            {
                if (RefuseCommits) return WindowsMemory.ERROR_NOT_ENOUGH_MEMORY;
                Interlocked.Increment(ref Commits);
                return _real.Protect(address, bytes, readWrite: true);
            }
            if (RefuseDecommits) return WindowsMemory.ERROR_NOT_ENOUGH_MEMORY;
            Interlocked.Increment(ref Decommits);
            int rc = _real.Advise(address, bytes, OsAdvice.DontNeed);
            return rc != 0 ? rc : _real.Protect(address, bytes, readWrite: false);
        }

        public int Advise(nint address, nuint bytes, OsAdvice advice)
        {
            if (advice != OsAdvice.DontNeed)
            {
                Interlocked.Increment(ref HugePageCalls);
                return 0;
            }
            Interlocked.Increment(ref Discards);
            return _real.Advise(address, bytes, advice);
        }

        public int Unmap(nint address, nuint bytes) => _real.Unmap(address, bytes);
    }

    private static (List<BlockHandle> kept, List<BlockHandle> all) FillAndFreeThreeQuarters(NativeHeap heap, int count)
    {
        var random = new Random(22);
        var all = new List<BlockHandle>();
        for (int i = 0; i < count; i++)
        {
            BlockHandle h = heap.Allocate(random.Next(64, 2049));
            TestHeaps.Fill(heap, h);
            all.Add(h);
        }
        var kept = new List<BlockHandle>();
        foreach (BlockHandle h in all)
        {
            if (random.Next(4) == 0) kept.Add(h);
            else heap.Free(h);
        }
        return (kept, all);
    }

    [Fact]
    public void TheOsLayerIsChosenByTheRunningOperatingSystem()
    {
        IOsMemory os = OsMemory.Default;
        Assert.Equal(OperatingSystem.IsWindows() ? OsBackEnd.Windows : OsBackEnd.Linux, os.BackEnd);
        Assert.Equal(OperatingSystem.IsLinux() || OperatingSystem.IsWindows(), OsMemory.IsNative);
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20 });
        Assert.Equal(OperatingSystem.IsWindows(), heap.Memory.IsWindows);
        Assert.Equal(OperatingSystem.IsLinux(), heap.Memory.IsLinux);
    }

    [LinuxFact("emulates the Windows back end over the Linux calls; under Windows the real one runs these paths")]
    public void ADecommitRevokesThePageblockAndItsNextUseCommitsItAgainWithEveryByteIntact()
    {
        var os = new WindowsLikeOsMemory();
        using NativeHeap heap = TestHeaps.Small(os: os);
        (List<BlockHandle> kept, _) = FillAndFreeThreeQuarters(heap, 20_000);
        heap.Compact();
        long committed = heap.GetStatistics().CommittedBytes;
        int commitsBefore = os.Commits;
        Assert.True(heap.ReleaseFreeMemory() > 0);
        HeapStatistics released = heap.GetStatistics();
        output.WriteLine($"committed {committed} -> {released.CommittedBytes}; decommits {os.Decommits}, discards {os.Discards}, huge-page calls {os.HugePageCalls}");
        Assert.True(os.Decommits > 0, "the release decommitted through Protect(none), VirtualFree(MEM_DECOMMIT)");
        Assert.True(released.CommittedBytes < committed / 2);
        Assert.Equal(0, os.HugePageCalls);   // large pages are off on Windows
        Assert.Equal(0, released.DecommitFailures);
        TestHeaps.AssertValid(heap);          // the validator must not read a decommitted (inaccessible) pageblock
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));

        // The decommitted pageblocks come back through a commit call each, zeroed and usable.
        var again = new List<BlockHandle>();
        for (int i = 0; i < 20_000; i++)
        {
            BlockHandle h = heap.Allocate(1024);
            TestHeaps.Fill(heap, h);
            again.Add(h);
        }
        Assert.True(os.Commits > commitsBefore, "reusing decommitted pageblocks committed them again");
        foreach (BlockHandle h in again) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
    }

    [LinuxFact("emulates the Windows back end over the Linux calls; under Windows the real one runs these paths")]
    public void ARefusedDecommitIsCountedAndLeavesTheMemoryCommittedAndUsable()
    {
        var os = new WindowsLikeOsMemory();
        using NativeHeap heap = TestHeaps.Small(os: os);
        (List<BlockHandle> kept, _) = FillAndFreeThreeQuarters(heap, 20_000);
        heap.Compact();
        long committed = heap.GetStatistics().CommittedBytes;
        os.RefuseDecommits = true;
        heap.ReleaseFreeMemory();
        HeapStatistics s = heap.GetStatistics();
        output.WriteLine($"committed {committed} -> {s.CommittedBytes}, decommit failures {s.DecommitFailures}");
        Assert.True(s.DecommitFailures > 0);
        Assert.Equal(committed, s.CommittedBytes);
        TestHeaps.AssertValid(heap);
        foreach (BlockHandle h in kept) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        os.RefuseDecommits = false;
        heap.ReleaseFreeMemory();
        Assert.True(heap.GetStatistics().CommittedBytes < committed, "a later release decommits what the refused one left");
    }

    [LinuxFact("emulates the Windows back end over the Linux calls; under Windows the real one runs these paths")]
    public void ARefusedRecommitFailsTheAllocationCleanlyAndTheNextOneSucceeds()
    {
        var os = new WindowsLikeOsMemory();
        using NativeHeap heap = TestHeaps.Small(os: os);
        (List<BlockHandle> kept, List<BlockHandle> all) = FillAndFreeThreeQuarters(heap, 20_000);
        foreach (BlockHandle h in kept) heap.Free(h);
        heap.ReleaseFreeMemory();
        Assert.Equal(0, heap.GetStatistics().CommittedBytes);
        os.RefuseCommits = true;
        Assert.False(heap.TryAllocate(100_000, BlockKind.Movable, out _));
        Assert.Throws<OutOfMemoryException>(() => heap.Allocate(100_000));
        HeapStatistics s = heap.GetStatistics();
        Assert.True(s.CommitFailures > 0);
        Assert.Equal(0, s.LiveBlocks);
        TestHeaps.AssertValid(heap);
        os.RefuseCommits = false;
        BlockHandle b = heap.Allocate(100_000);
        TestHeaps.Fill(heap, b);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, b));
        output.WriteLine($"{all.Count} blocks; commit failures {s.CommitFailures}");
    }
}
