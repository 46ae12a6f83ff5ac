using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>Long-term pins (the kernel's FOLL_LONGTERM; native-layout.md, "Long-term pins"): a movable block is moved
/// into unmovable memory first and stays unmovable; the movable zone never holds a long-term pinned block.</summary>
public sealed class LongTermPinTests
{
    private static bool InMovableZone(NativeHeap heap, nint address) =>
        heap.Movable is { } z && z.Contains(heap.Map.PageOf(address));

    [Theory]
    [InlineData(100)]          // a slab slot
    [InlineData(64 * 1024)]    // a page run
    public void AMovableBlockMovesOutOfTheMovableZoneAndStaysUnmovable(int size)
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50);
        BlockHandle h = heap.Allocate(size);
        TestHeaps.Fill(heap, h);
        nint before;
        using (PinScope p = heap.Pin(h)) unsafe { fixed (byte* b = p.Span) before = (nint)b; }
        Assert.True(InMovableZone(heap, before));

        BlockPin pin = heap.PinLongTerm(h);
        Assert.True(pin.IsHeld);
        Assert.Equal(size, pin.Length);
        Assert.False(InMovableZone(heap, pin.Address));
        Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));
        Assert.Equal(pin.Address, heap.GetStablePointer(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(1, s.LongTermPins);
        Assert.Equal(1, s.LongTermPinMigrations);
        Assert.Equal(size, s.LongTermPinBytesMoved);
        Assert.Throws<InvalidOperationException>(() => heap.Free(h));     // pinned
        TestHeaps.AssertValid(heap);

        nint at = pin.Address;
        pin.Dispose();
        pin.Dispose();                                                      // a second release does nothing
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));                 // unmovable for good
        heap.Compact();
        Assert.Equal(at, heap.GetStablePointer(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void AnUnmovableBlockIsPinnedInPlace()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(300, BlockKind.Unmovable);
        nint at = heap.GetStablePointer(h);
        using (BlockPin pin = heap.PinLongTerm(h))
        {
            Assert.Equal(at, pin.Address);
            Assert.Equal(0, heap.GetStatistics().LongTermPinMigrations);
            Assert.Equal(1, heap.GetStatistics().LongTermPins);
        }
        heap.Free(h);
    }

    [Fact]
    public void ABatchPinsEveryBlockInOneMigrationAndTheMovableZoneHoldsNone()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, arenaBytes: 128L << 20);
        var rng = new Random(7);
        var handles = new BlockHandle[600];
        for (int i = 0; i < handles.Length; i++)
        {
            handles[i] = heap.Allocate(rng.Next(4) == 0 ? rng.Next(17_000, 80_000) : rng.Next(1, 4000), i % 10 == 0 ? BlockKind.Unmovable : BlockKind.Movable);
            TestHeaps.Fill(heap, handles[i]);
        }
        var pins = new BlockPin[handles.Length];
        heap.PinLongTerm(handles, pins);
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(handles.Length, s.LongTermPins);
        Assert.Equal(handles.Length - handles.Length / 10, s.LongTermPinMigrations);
        for (int i = 0; i < handles.Length; i++)
        {
            Assert.Equal(handles[i], pins[i].Handle);
            Assert.False(InMovableZone(heap, pins[i].Address));
            Assert.Equal(0, TestHeaps.CountCorrupt(heap, handles[i]));
        }
        TestHeaps.AssertValid(heap);   // includes: no unmovable entry in the movable zone
        foreach (BlockPin p in pins) p.Dispose();
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        foreach (BlockHandle h in handles) heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void WhenTheNormalZoneIsFullThePinFailsAndNothingChanges()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50);
        var filler = new List<BlockHandle>();
        while (heap.TryAllocate(4096, BlockKind.Unmovable, out BlockHandle u)) filler.Add(u);
        BlockHandle first = heap.Allocate(64 * 1024);
        BlockHandle h = heap.Allocate(64 * 1024);
        TestHeaps.Fill(heap, first);
        TestHeaps.Fill(heap, h);
        Assert.Throws<OutOfMemoryException>(() => heap.PinLongTerm(h));
        var pins = new BlockPin[2];
        Assert.Throws<OutOfMemoryException>(() => heap.PinLongTerm([first, h], pins));
        Assert.All(pins, p => Assert.False(p.IsHeld));
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(0, s.LongTermPins);
        Assert.Equal(2, s.LongTermPinFailures);
        Assert.Equal(BlockKind.Movable, heap.GetKind(h));
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        TestHeaps.AssertValid(heap);
        heap.Free(filler[0]);     // one page of unmovable room: enough for neither 64 KiB run, still all or nothing
        filler.RemoveAt(0);
        Assert.Throws<OutOfMemoryException>(() => heap.PinLongTerm([first, h], pins));
        filler.ForEach(heap.Free);
        filler.Clear();
        heap.PinLongTerm([first, h], pins);
        Assert.Equal(2, heap.GetStatistics().LongTermPins);
        foreach (BlockPin p in pins) p.Dispose();
        heap.Free(first);
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ABlockHeldByAShortPinIsRefusedAfterThePatienceAndStaysMovable()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(256);
        using (PinScope scope = heap.Pin(h))
            Assert.Throws<InvalidOperationException>(() => heap.PinLongTerm(h));
        using (BlockPin atomic = heap.AcquirePin(h))
            Assert.Throws<InvalidOperationException>(() => heap.PinLongTerm(h));
        Assert.Equal(BlockKind.Movable, heap.GetKind(h));
        Assert.Equal(2, heap.GetStatistics().LongTermPinFailures);
        using (heap.PinLongTerm(h)) Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));
        heap.Free(h);
    }

    [Fact]
    public void ABadHandleInABatchFailsItBeforeAnyBlockIsTouched()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle good = heap.Allocate(64), gone = heap.Allocate(64);
        heap.Free(gone);
        var pins = new BlockPin[2];
        Assert.Throws<InvalidBlockHandleException>(() => heap.PinLongTerm([good, gone], pins));
        Assert.Throws<InvalidBlockHandleException>(() => heap.PinLongTerm([good, default], pins));
        Assert.Throws<ArgumentException>(() => heap.PinLongTerm([good, good], pins.AsSpan(0, 1)));
        Assert.Equal(BlockKind.Movable, heap.GetKind(good));
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        heap.Free(good);
    }

    [Fact]
    public void HeldLongTermPinsRefuseDisposeUntilReleased()
    {
        var heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(64);
        BlockPin pin = heap.PinLongTerm(h);
        Assert.Throws<InvalidOperationException>(heap.Dispose);
        pin.Dispose();
        heap.Free(h);
        heap.Dispose();
    }

    [Fact]
    public void LongTermPinsBesideACompactorThatNeverStopsLoseNoByte()
    {
        using NativeHeap heap = TestHeaps.Small(movablePercent: 50, arenaBytes: 256L << 20);
        var rng = new Random(11);
        var blocks = new List<BlockHandle>();
        for (int i = 0; i < 4000; i++)
        {
            BlockHandle h = heap.Allocate(rng.Next(4) == 0 ? rng.Next(17_000, 40_000) : rng.Next(1, 2000));
            TestHeaps.Fill(heap, h);
            blocks.Add(h);
        }
        for (int i = 0; i < blocks.Count; i += 3) heap.Free(blocks[i]);
        blocks = blocks.Where((_, i) => i % 3 != 0).ToList();
        using var stop = new CancellationTokenSource();
        var compactor = new Thread(() =>
        {
            while (!stop.IsCancellationRequested) { heap.Compact(); heap.RunCompactionStep(TimeSpan.FromSeconds(1)); }
        });
        compactor.Start();
        int corrupt = 0;
        for (int round = 0; round < 40; round++)
        {
            var batch = blocks.Skip(round * 50 % blocks.Count).Take(50).ToArray();
            var pins = new BlockPin[batch.Length];
            heap.PinLongTerm(batch, pins);
            foreach (BlockPin p in pins)
            {
                if (InMovableZone(heap, p.Address)) corrupt += 1_000_000;
                Span<byte> span = p.Span;
                for (int i = 0; i < span.Length; i++) if (span[i] != TestHeaps.Pattern(p.Handle, i)) { corrupt++; break; }
                p.Dispose();
            }
        }
        stop.Cancel();
        compactor.Join();
        Assert.Equal(0, corrupt);
        Assert.All(blocks, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        TestHeaps.AssertValid(heap);
        blocks.ForEach(heap.Free);
    }
}

/// <summary>Long-term pins meeting the heap's other features: owners, parked storage, the huge-page density check.</summary>
public sealed class LongTermPinInteractionTests
{
    private sealed class CountingOwner : IMovableBlockOwner
    {
        public int Moves;
        public bool Isolate(BlockHandle h) => true;
        public OwnerMigrateResult Migrate(BlockHandle h, nint oldAddress, nint newAddress) { Moves++; return OwnerMigrateResult.Success; }
        public void Putback(BlockHandle h) { }
    }

    [Fact]
    public void AnOwnedBlockIsMovedWithItsOwnerToldAndThenHasNoOwner()
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100);
        var owner = new CountingOwner();
        heap.SetMovableOwner(h, owner);
        heap.PinLongTerm(h).Dispose();
        Assert.Equal(1, owner.Moves);
        Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));
        heap.SetMovableOwner(h, null);                                           // nothing to unregister: fine
        Assert.Throws<InvalidOperationException>(() => heap.SetMovableOwner(h, owner));
        heap.Compact();
        Assert.Equal(1, owner.Moves);                                            // never called again
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    private sealed class RefusingOwner(int how) : IMovableBlockOwner
    {
        public bool Isolate(BlockHandle h) => how == 0 ? false : how == 1 ? throw new InvalidOperationException("refuses") : true;
        public OwnerMigrateResult Migrate(BlockHandle h, nint oldAddress, nint newAddress) =>
            how == 2 ? OwnerMigrateResult.TryAgain : throw new InvalidOperationException("refuses");
        public void Putback(BlockHandle h) { }
    }

    /// <summary>Found by the model-based tests: a long-term pin of a block whose owner never lets it move (refuses to
    /// isolate it, throws, answers "try again") retried for ever. It now gives up after the patience, as for a pin.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void ALongTermPinOfABlockWhoseOwnerRefusesGivesUpAfterThePatience(int how)
    {
        using NativeHeap heap = TestHeaps.Small();
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        heap.SetMovableOwner(h, new RefusingOwner(how));
        var ex = Assert.Throws<InvalidOperationException>(() => heap.PinLongTerm(h));
        Assert.Contains("owner", ex.Message);
        var pins = new BlockPin[1];
        Assert.Throws<InvalidOperationException>(() => heap.PinLongTerm([h], pins));
        Assert.False(pins[0].IsHeld);
        Assert.Equal(BlockKind.Movable, heap.GetKind(h));
        Assert.Equal(0, heap.GetStatistics().LongTermPins);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.SetMovableOwner(h, null);
        using (heap.PinLongTerm(h)) Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    [Fact]
    public void ALongTermPinFindsUnmovableSlotsParkedInTheThreadCache()
    {
        using NativeHeap heap = TestHeaps.Small(arenaBytes: 16L << 20);
        var filler = new List<BlockHandle>();
        while (heap.TryAllocate(512, BlockKind.Unmovable, out BlockHandle u)) filler.Add(u);
        for (int i = 0; i < 64; i++) heap.Free(filler[^(i + 1)]);               // parked in this thread's cache
        filler.RemoveRange(filler.Count - 64, 64);
        BlockHandle h = heap.Allocate(512);
        using (BlockPin pin = heap.PinLongTerm(h)) Assert.Equal(BlockKind.Unmovable, heap.GetKind(h));
        heap.Free(h);
        filler.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }
}
