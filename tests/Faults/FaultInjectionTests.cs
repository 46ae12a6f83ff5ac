using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;

namespace Compaction.Tests;

/// <summary>
/// The OS refuses: every system call of a heap goes through its OS layer, here a <see cref="FaultyOsMemory"/> over the
/// real layer of this OS that refuses chosen calls with its out-of-memory error (ENOMEM; ERROR_NOT_ENOUGH_MEMORY on
/// Windows). Each refusal fails only what needed it, with the documented exception or result, is counted, and leaves
/// the heap valid with every live byte intact; once the OS gives memory again the heap serves as before. The heap's
/// operations are named, not the calls (a decommit is MADV_DONTNEED on Linux and VirtualFree(MEM_DECOMMIT) on Windows),
/// so every test runs on both back ends but the two whose subject only Linux has (huge-page advice, the mapping
/// limit). (Decommit and purge refusals of one call: DecommitFailureTests.)
/// </summary>
public sealed unsafe class FaultInjectionTests
{
    private static HeapOptions Options(bool caches = true) => new()
    {
        ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 50, PerThreadCaches = caches,
        WasteHighRatio = 0, Proactiveness = 0,
    };

    private static List<BlockHandle> AllocateFilled(NativeHeap heap, int count, long size, BlockKind kind)
    {
        var blocks = new List<BlockHandle>();
        for (int i = 0; i < count; i++)
        {
            BlockHandle h = heap.Allocate(size, kind);
            TestHeaps.Fill(heap, h);
            blocks.Add(h);
        }
        return blocks;
    }

    private static void AssertIntact(NativeHeap heap, IEnumerable<BlockHandle> blocks)
    {
        foreach (BlockHandle h in blocks) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
    }

    /// <summary>With every commit refused, a block that needs a new pageblock (slabs: through the thread cache's
    /// refill when caches are on; page runs; runs above the largest buddy order, several pageblocks) fails: TryAllocate
    /// returns false, Allocate throws OutOfMemoryException, each refusal is counted once in CommitFailures, and nothing
    /// changes (the validator finds nothing). Once the OS gives memory again the same sizes are served.</summary>
    [Theory]
    [InlineData(BlockKind.Movable, 64L, true)]
    [InlineData(BlockKind.Movable, 64L, false)]
    [InlineData(BlockKind.Unmovable, 64L, true)]
    [InlineData(BlockKind.Unmovable, 64L, false)]
    [InlineData(BlockKind.Movable, 40_000L, true)]
    [InlineData(BlockKind.Unmovable, 40_000L, true)]
    [InlineData(BlockKind.Movable, 1L << 20, true)]
    [InlineData(BlockKind.Unmovable, 1L << 20, false)]
    public void ARefusedCommitFailsTheAllocationCleanlyAndALaterOneSucceeds(BlockKind kind, long size, bool caches)
    {
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(Options(caches), os);
        List<BlockHandle> live = AllocateFilled(heap, 3, size, kind);
        long committed = heap.GetStatistics().CommittedBytes;

        os.RefuseInArena(heap, os.CommitCall);
        // What is committed already still serves; the first block that needs a new pageblock fails.
        int served = 0;
        while (heap.TryAllocate(size, kind, out BlockHandle h))
        {
            TestHeaps.Fill(heap, h);
            live.Add(h);
            Assert.True(++served < 100_000, "allocation never needed a new pageblock");
        }
        Assert.Throws<OutOfMemoryException>(() => heap.Allocate(size, kind));

        HeapStatistics stats = heap.GetStatistics();
        Assert.True(os.Refused(os.CommitCall) >= 2);
        Assert.Equal(os.Refused(os.CommitCall), stats.CommitFailures);
        Assert.Equal(committed, stats.CommittedBytes);           // a refused commit commits nothing
        Assert.Equal(live.Count, stats.LiveBlocks);
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, live);

        os.Allow();
        live.AddRange(AllocateFilled(heap, 3, size, kind));
        Assert.True(heap.GetStatistics().CommittedBytes > committed);
        AssertIntact(heap, live);
        TestHeaps.AssertValid(heap);
        live.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>A run of several pageblocks whose second commit is refused: the allocation fails, the pageblock that
    /// was committed stays committed (and counted so) and free, and a release gives it back.</summary>
    [Fact]
    public void ARunWhoseCommitIsRefusedHalfWayKeepsTheAccountingTrue()
    {
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(Options(), os);
        long pageblockBytes = (long)heap.Map.PageblockPages << heap.Map.PageShift;
        os.RefuseInArena(heap, os.CommitCall, times: 1, skip: 1);

        Assert.False(heap.TryAllocate(4 * pageblockBytes, BlockKind.Unmovable, out _));   // unmovable: no direct compaction retries it

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(1, stats.CommitFailures);
        Assert.Equal(pageblockBytes, stats.CommittedBytes);
        Assert.Equal(0, stats.LiveBlocks);
        TestHeaps.AssertValid(heap);
        Assert.Equal(pageblockBytes, heap.ReleaseFreeMemory());
        BlockHandle h = heap.Allocate(4 * pageblockBytes, BlockKind.Unmovable);
        TestHeaps.Fill(heap, h);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }

    /// <summary>Compaction takes its destinations from committed pageblocks only, so with every commit refused an
    /// explicit compaction still moves blocks (asking the OS for nothing), and an allocation that falls into direct
    /// compaction fails cleanly when no committed room can be made.</summary>
    [Fact]
    public void CompactionWhileTheOsRefusesCommitsMovesIntoCommittedMemoryOnly()
    {
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(Options(), os);
        List<BlockHandle> blocks = AllocateFilled(heap, 400, 40_000, BlockKind.Movable);
        var kept = blocks.Where((_, i) => i % 4 == 0).ToList();
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);

        os.RefuseInArena(heap, os.CommitCall);
        int commits = os.Calls(os.CommitCall);
        CompactionStatistics run = heap.Compact();
        Assert.True(run.BytesMoved > 0);
        Assert.Equal(commits, os.Calls(os.CommitCall));      // no destination needed a commit
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);

        // A movable run larger than any committed free space: direct compaction runs, finds no room, and the
        // allocation fails after a refused commit.
        long zoneBytes = heap.MaxBlockSize;
        Assert.False(heap.TryAllocate(zoneBytes / 2, BlockKind.Movable, out _));
        Assert.True(heap.GetStatistics().CommitFailures > 0);
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, kept);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>A long-term pin moves a movable block into unmovable memory; when the OS refuses the commit that move
    /// needs, PinLongTerm throws OutOfMemoryException and nothing stays pinned: the block is where it was with its
    /// bytes, can be freed, and Dispose is not refused. The batch form pins none of its blocks.</summary>
    [Fact]
    public void ALongTermPinWhoseMoveTheOsRefusesThrowsAndLeavesNothingPinned()
    {
        var os = new FaultyOsMemory();
        var heap = new NativeHeap(Options(), os);
        List<BlockHandle> blocks = AllocateFilled(heap, 4, 5000, BlockKind.Movable);
        nint before = heap.CurrentAddress(blocks[0]);

        os.RefuseInArena(heap, os.CommitCall);
        Assert.Throws<OutOfMemoryException>(() => heap.PinLongTerm(blocks[0]));
        var pins = new BlockPin[blocks.Count];
        Assert.Throws<OutOfMemoryException>(() => heap.PinLongTerm(blocks.ToArray(), pins));

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(0, stats.LongTermPins);
        Assert.True(stats.CommitFailures >= 2);
        Assert.Equal(before, heap.CurrentAddress(blocks[0]));
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, blocks);

        os.Allow();
        using (BlockPin pin = heap.PinLongTerm(blocks[0])) Assert.Equal(TestHeaps.Pattern(blocks[0], 17), pin.Span[17]);
        heap.Free(blocks[1]);                                 // never pinned: frees
        blocks.RemoveAt(1);
        AssertIntact(heap, blocks);
        blocks.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
        heap.Dispose();                                       // no pin was left behind to refuse it
    }

    /// <summary>Every purge and decommit refused, in an explicit release and in the background trim and decay: each
    /// refusal is counted, nothing is reported given back, and the accounting (committed, purged free bytes, the
    /// resident estimate) stays what it was; once the OS agrees, the heap ends where a twin heap that was never
    /// refused ends.</summary>
    [Fact]
    public void RefusedPurgesAndDecommitsKeepTheAccountingTrueAndALaterReleaseCatchesUp()
    {
        var os = new FaultyOsMemory();
        HeapOptions o = Options();
        o.DecommitDelay = TimeSpan.Zero;
        using var heap = new NativeHeap(o, os);
        using var twin = new NativeHeap(o);
        (List<BlockHandle> kept, List<BlockHandle> twinKept) = (Sparse(heap), Sparse(twin));
        HeapStatistics start = heap.GetStatistics();

        os.RefuseInArena(heap, os.DecommitCall);
        os.RefuseInArena(heap, os.PurgeCall);                 // the same call on Linux, another on Windows
        Assert.Equal(0, heap.ReleaseFreeMemory());
        for (int s = 1; s <= 3; s++) Assert.Equal(0, heap.RunCompactionStep(TimeSpan.FromMinutes(s)).BytesDecommitted);
        HeapStatistics refused = heap.GetStatistics();
        Assert.True(refused.DecommitFailures > 0);
        Assert.Equal(os.RefusedReleases, refused.DecommitFailures);
        Assert.Equal(start.CommittedBytes, refused.CommittedBytes);
        Assert.Equal(0, refused.PurgedBytes);
        Assert.Equal(0, refused.PurgedFreeBytes);
        Assert.Equal(0, refused.DecommittedBytes);
        TestHeaps.AssertValid(heap);

        os.Allow();
        Assert.True(heap.ReleaseFreeMemory() > 0);
        twin.ReleaseFreeMemory();
        HeapStatistics after = heap.GetStatistics(), expected = twin.GetStatistics();
        Assert.Equal(expected.CommittedBytes, after.CommittedBytes);
        Assert.Equal(expected.DecommittedBytes, after.DecommittedBytes);
        Assert.Equal(expected.PurgedFreeBytes, after.PurgedFreeBytes);
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        twinKept.ForEach(twin.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>Huge-page advice refused (madvise MADV_NOHUGEPAGE answering ENOMEM, as at vm.max_map_count): counted
    /// in AdviceFailures, no pageblock is taken for small pages, and nothing else changes: what was decommitted and
    /// purged equals what a twin heap whose advice was taken gave back.</summary>
    [LinuxFact("transparent huge pages: the Windows back end gives no huge-page advice")]
    public void RefusedHugePageAdviceIsCountedAndChangesNothingElse()
    {
        var os = new FaultyOsMemory();
        HeapOptions o = Options();
        o.UseHugePages = true;
        using var heap = new NativeHeap(o, os);
        using var twin = new NativeHeap(o);
        (List<BlockHandle> kept, List<BlockHandle> twinKept) = (Sparse(heap), Sparse(twin));

        os.RefuseInArena(heap, OsCall.NoHugePage);
        long released = heap.ReleaseFreeMemory();
        long twinReleased = twin.ReleaseFreeMemory();

        HeapStatistics stats = heap.GetStatistics(), expected = twin.GetStatistics();
        Assert.True(expected.SmallPagePageblocks > 0, "the twin took small pages for its sparse pageblocks");
        Assert.Equal(0, stats.SmallPagePageblocks);
        Assert.Equal(os.Refused(OsCall.NoHugePage), stats.AdviceFailures);
        Assert.True(stats.AdviceFailures > 0);
        Assert.Equal(twinReleased, released);
        Assert.Equal(expected.PurgedBytes, stats.PurgedBytes);
        Assert.Equal(expected.DecommittedBytes, stats.DecommittedBytes);
        Assert.Equal(expected.CommittedBytes, stats.CommittedBytes);
        Assert.Equal(0, stats.DecommitFailures);
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        twinKept.ForEach(twin.Free);
    }

    /// <summary>The mapping limit modelled (vm.max_map_count, here a handful above what the heap holds): the advice
    /// that would split the arena's mapping past it is refused with ENOMEM, counted, and the purge goes on; the
    /// mappings never pass the limit. A commit in the middle of the reservation is refused the same way and fails
    /// its allocation cleanly.</summary>
    [LinuxFact("vm.max_map_count, the limit on a process's mappings, modelled by FaultyOsMemory.MaxMappings")]
    public void AtTheMappingLimitSplitsAreRefusedAndTheHeapGoesOn()
    {
        var os = new FaultyOsMemory();
        HeapOptions o = Options();
        o.UseHugePages = true;
        using var heap = new NativeHeap(o, os);
        List<BlockHandle> kept = Sparse(heap, everyOtherDense: true);
        int limit = os.Mappings + 3;
        os.MaxMappings = limit;

        Assert.True(heap.ReleaseFreeMemory() > 0);
        HeapStatistics stats = heap.GetStatistics();
        Assert.True(stats.AdviceFailures > 0, $"some advice would have passed the limit: {os.Mappings} mappings of {limit}, {stats.SmallPagePageblocks} small-page pageblocks, {os.Calls(OsCall.NoHugePage)} advised");
        Assert.True(os.Mappings <= limit);
        Assert.True(stats.PurgedBytes > 0);

        TestHeaps.AssertValid(heap);
        AssertIntact(heap, kept);

        // A fresh heap two mappings above what it holds: its first commit, at the arena's base, adds one mapping (two
        // when the base is not where the reservation starts: alignment) and passes; the movable zone's first commit,
        // in the middle of the reserved mapping, would add two more and is refused; movable blocks then fall back to
        // the normal zone.
        var os2 = new FaultyOsMemory();
        using var fresh = new NativeHeap(o, os2);
        int freshLimit = os2.Mappings + 2;
        os2.MaxMappings = freshLimit;
        var more = AllocateFilled(fresh, 4, 40_000, BlockKind.Unmovable);
        for (int i = 0; i < 8 && fresh.TryAllocate(40_000, BlockKind.Movable, out BlockHandle m); i++) { TestHeaps.Fill(fresh, m); more.Add(m); }
        Assert.True(os2.Refused(os2.CommitCall) > 0, "the movable zone's first commit would split the mapping in three");
        Assert.Equal(os2.Refused(os2.CommitCall), fresh.GetStatistics().CommitFailures);
        Assert.True(os2.Mappings <= freshLimit);
        TestHeaps.AssertValid(fresh);
        AssertIntact(fresh, more);
        more.ForEach(fresh.Free);
        TestHeaps.AssertValid(fresh);
        os.Allow();
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>The reservation refused (mmap; VirtualAlloc(MEM_RESERVE) on Windows) when a heap reserves its arena,
    /// and when it maps its page descriptors: the constructor throws OutOfMemoryException saying what could not be
    /// reserved and the OS's error, nothing stays mapped, and heaps are made afterwards as before.</summary>
    [Fact]
    public void ARefusedReservationFailsTheConstructorAndLeaksNothing()
    {
        var os = new FaultyOsMemory();
        os.Refuse(OsCall.Map, times: 1);
        var arena = Assert.Throws<OutOfMemoryException>(() => new NativeHeap(Options(), os));
        Assert.Contains("reserve its arena", arena.Message);
        Assert.Contains(OsError.Describe(FaultyOsMemory.OutOfMemory), arena.Message);   // "errno 12, ..." on Linux
        Assert.Equal(0, os.Mappings);

        os.Refuse(OsCall.Map, times: 1, skip: 1);              // the arena is mapped, the descriptor array is not
        var metadata = Assert.Throws<OutOfMemoryException>(() => new NativeHeap(Options(), os));
        Assert.Contains("metadata", metadata.Message);
        Assert.Equal(0, os.Mappings);                          // the arena was unmapped again
        Assert.Equal(2, os.Refused(OsCall.Map));

        using var heap = new NativeHeap(Options(), os);
        List<BlockHandle> blocks = AllocateFilled(heap, 10, 5000, BlockKind.Movable);
        AssertIntact(heap, blocks);
        using var plain = new NativeHeap(Options());
        plain.Free(plain.Allocate(100));
        blocks.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>The handle table's growth refused: the heap's next chunk of handle entries cannot be committed, so
    /// the allocation that needs an entry fails cleanly (TryAllocate false, Allocate OutOfMemoryException), the storage
    /// it had taken goes back, and once the OS agrees the table grows again. (The table is process-wide; its chunk
    /// commits go through the asking heap's OS layer, and the heap here takes new chunks only, so that chunks other
    /// heaps gave back do not decide whether the refused commit is reached.)</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void RefusedHandleTableGrowthFailsTheAllocationCleanly(bool caches)
    {
        var os = new FaultyOsMemory();
        using var heap = new NativeHeap(Options(caches), os);
        heap.Handles.NewChunksOnly = true;
        nint table = (nint)HandleStore.Base;
        os.Refuse(os.CommitCall, skip: 1, from: table, to: table + (nint)((long)HandleStore.MaxEntries * HandleStore.EntryBytes));

        var live = new List<BlockHandle>();
        while (heap.TryAllocate(64, BlockKind.Movable, out BlockHandle h))
        {
            TestHeaps.Fill(heap, h);
            live.Add(h);
            Assert.True(live.Count <= HandleStore.ChunkEntries, "more blocks than one chunk of entries");
        }
        Assert.True(live.Count >= HandleStore.ChunkEntries - 1);   // the one chunk the OS committed (less index 0)
        Assert.Throws<OutOfMemoryException>(() => heap.Allocate(40_000, BlockKind.Unmovable));
        Assert.True(os.Refused(os.CommitCall) >= 2);
        Assert.Equal(live.Count, heap.GetStatistics().LiveBlocks);
        Assert.Equal(0, heap.GetStatistics().CommitFailures);     // no arena commit was refused
        Assert.Equal(os.Refused(os.CommitCall), heap.GetStatistics().HandleTableGrowthFailures);   // every refused chunk counted once
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, live);

        os.Allow();
        live.AddRange(AllocateFilled(heap, 100, 64, BlockKind.Movable));
        AssertIntact(heap, live);
        live.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>Blocks in every pageblock (8 to a pageblock), most of them freed: free runs inside used pageblocks (to
    /// purge) and wholly free pageblocks (to decommit). With <paramref name="everyOtherDense"/>, every other pageblock
    /// keeps all its blocks, so the sparse ones are apart (each its own island of small pages). Returns the kept
    /// blocks, filled.</summary>
    private static List<BlockHandle> Sparse(NativeHeap heap, bool everyOtherDense = false)
    {
        List<BlockHandle> blocks = AllocateFilled(heap, 600, 30_000, BlockKind.Movable);
        blocks.AddRange(AllocateFilled(heap, 300, 30_000, BlockKind.Unmovable));
        var kept = blocks.Where((_, i) => i < 700 && (i % 8 == 0 || (everyOtherDense && i / 8 % 2 == 0))).ToList();
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);
        return kept;
    }
}
