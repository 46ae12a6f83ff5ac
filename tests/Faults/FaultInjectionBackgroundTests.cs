using System.Diagnostics.Tracing;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>
/// Faults above the OS: movable owners whose callbacks throw or never agree, an exception inside the background
/// compactor (at the start of a step and in the middle of a pass), and a thread that dies holding pins and a cache.
/// Each ends with the validator empty and every live byte verified.
/// </summary>
public sealed class FaultInjectionBackgroundTests
{
    private static HeapOptions Options() => new()
    {
        ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 50, CompactionInterval = TimeSpan.FromMilliseconds(5),
    };

    /// <summary>600 movable 40 KB blocks, three in four freed: waste high enough for a background run, and holes to
    /// compact into. Returns the kept blocks, filled.</summary>
    private static List<BlockHandle> Fragment(NativeHeap heap)
    {
        var blocks = Enumerable.Range(0, 600).Select(_ => heap.Allocate(40_000)).ToList();
        var kept = blocks.Where((_, i) => i % 4 == 3).ToList();
        foreach (BlockHandle h in blocks.Except(kept)) heap.Free(h);
        foreach (BlockHandle h in kept) TestHeaps.Fill(heap, h);
        return kept;
    }

    private static void AssertIntact(NativeHeap heap, IEnumerable<BlockHandle> blocks)
    {
        foreach (BlockHandle h in blocks) Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
    }

    /// <summary>Waits for <paramref name="condition"/> (a bounded wait for something the background thread does, not
    /// a timing: the bound only keeps a broken build from hanging).</summary>
    private static void WaitFor(Func<bool> condition, string what)
    {
        var limit = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < limit, "gave up waiting: " + what);
            Thread.Sleep(2);
        }
    }

    public enum Misbehaviour { ThrowInIsolate, ThrowInMigrate, NeverAgree }

    private sealed class BadOwner(Misbehaviour how) : IMovableBlockOwner
    {
        public int Asked;
        public bool Isolate(BlockHandle handle)
        {
            Interlocked.Increment(ref Asked);
            if (how == Misbehaviour.ThrowInIsolate) throw new InvalidOperationException("owner fails in isolate");
            return true;
        }

        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress)
        {
            if (how == Misbehaviour.ThrowInMigrate) throw new InvalidOperationException("owner fails in migrate");
            return OwnerMigrateResult.TryAgain;
        }

        public void Putback(BlockHandle handle) { }
    }

    /// <summary>Owners that throw (in Isolate or in Migrate) or never agree, during an explicit compaction and during
    /// the background compactor's waste-driven run (its step run by hand, the thread's own path): every owned block
    /// stays at its address with its bytes, the failures are counted (owner_failed for a throw, owner_retry for a
    /// refusal), the blocks without owners move, and the heap stays valid. (An owner that throws in Migrate during
    /// an explicit compaction alone: CompactionTests.)</summary>
    [Theory]
    [InlineData(Misbehaviour.ThrowInIsolate, false)]
    [InlineData(Misbehaviour.ThrowInMigrate, true)]
    [InlineData(Misbehaviour.ThrowInIsolate, true)]
    [InlineData(Misbehaviour.NeverAgree, false)]
    [InlineData(Misbehaviour.NeverAgree, true)]
    public void AMisbehavingOwnerKeepsItsBlockWhereItWasWithItsBytes(Misbehaviour how, bool background)
    {
        using var heap = new NativeHeap(Options());
        List<BlockHandle> kept = Fragment(heap);
        var owned = kept.Where((_, i) => i % 3 == 0).ToList();
        var owner = new BadOwner(how);
        foreach (BlockHandle h in owned) heap.SetMovableOwner(h, owner);
        var addresses = owned.ToDictionary(h => h, heap.CurrentAddress);

        CompactionStatistics run;
        if (!background)
        {
            run = heap.Compact();
        }
        else
        {
            CompactionStatistics before = heap.GetStatistics().Compaction;
            TimeSpan now = TimeSpan.Zero;
            for (int i = 0; i < 500 && (Volatile.Read(ref owner.Asked) < owned.Count || heap.GetStatistics().Compaction.WasteWakes == before.WasteWakes); i++)
                heap.RunCompactionStep(now += TimeSpan.FromSeconds(1));
            run = heap.GetStatistics().Compaction - before;
            Assert.True(run.WasteWakes > 0, "the waste-driven run started");
        }

        Assert.True(owner.Asked > 0, "the compactor asked the owner");
        Assert.True(run.BytesMoved > 0, "blocks without an owner moved");
        if (how == Misbehaviour.NeverAgree) Assert.True(run.MigrateOwnerRetry > 0);
        else Assert.True(run.MigrateOwnerFailed > 0);
        foreach (BlockHandle h in owned) Assert.Equal(addresses[h], heap.CurrentAddress(h));
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    private sealed class Recorder : EventListener
    {
        private readonly List<EventWrittenEventArgs> _events = [];
        public long HeapId;

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == NativeHeapEventSource.SourceName) EnableEvents(source, EventLevel.Verbose, NativeHeapEventSource.Keywords.Background);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.Payload is { Count: > 0 } p && p[0] is long id && id == Volatile.Read(ref HeapId)) lock (_events) _events.Add(e);
        }

        public List<EventWrittenEventArgs> Named(string name)
        {
            lock (_events) return _events.Where(e => e.EventName == name).ToList();
        }
    }

    /// <summary>An exception in a background step (injected at its start, where the heap is consistent) is caught on
    /// the background thread: the thread ends (BackgroundCompactionRunning false), the failure is counted with its
    /// type and message and raised as the BackgroundFailed event, allocation, pinning and freeing go on, and
    /// StartBackgroundCompaction starts the thread again.</summary>
    [Fact]
    public void AnExceptionInTheBackgroundThreadEndsItIsReportedAndTheThreadRestarts()
    {
        using var recorder = new Recorder();
        using var heap = new NativeHeap(Options());
        recorder.HeapId = heap.Id;
        List<BlockHandle> kept = Fragment(heap);
        int thrown = 0;
        heap.Compactor!.BackgroundStepStarting = () =>
        {
            if (Interlocked.Increment(ref thrown) == 3) throw new InvalidOperationException("injected background fault");
        };
        heap.StartBackgroundCompaction();
        WaitFor(() => !heap.BackgroundCompactionRunning, "the background thread to end");
        // The thread is marked stopped before the event is raised (the state must hold even when raising fails).
        WaitFor(() => recorder.Named("BackgroundFailed").Count > 0, "the BackgroundFailed event");

        HeapStatistics stats = heap.GetStatistics();
        Assert.Equal(1, stats.BackgroundFailures);
        Assert.Equal("System.InvalidOperationException: injected background fault", stats.LastBackgroundFailure);
        EventWrittenEventArgs failed = Assert.Single(recorder.Named("BackgroundFailed"));
        Assert.Equal("System.InvalidOperationException", failed.Payload![failed.PayloadNames!.IndexOf("exceptionType")]);
        Assert.Equal("injected background fault", failed.Payload![failed.PayloadNames!.IndexOf("message")]);

        // The heap goes on: allocate, pin, free; every byte is where it was.
        var more = Enumerable.Range(0, 200).Select(i => heap.Allocate(i % 2 == 0 ? 100 : 20_000)).ToList();
        foreach (BlockHandle h in more) TestHeaps.Fill(heap, h);
        using (BlockPin pin = heap.AcquirePin(kept[0])) Assert.Equal(TestHeaps.Pattern(kept[0], 5), pin.Span[5]);
        AssertIntact(heap, kept.Concat(more));
        more.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);

        heap.Compactor.BackgroundStepStarting = null;
        long wakes = heap.GetStatistics().Compaction.CompactDaemonWake;
        heap.StartBackgroundCompaction();
        Assert.True(heap.BackgroundCompactionRunning);
        WaitFor(() => heap.GetStatistics().Compaction.CompactDaemonWake > wakes + 2, "the restarted thread to wake");
        heap.StopBackgroundCompaction();
        Assert.Equal(1, heap.GetStatistics().BackgroundFailures);
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
    }

    /// <summary>An exception in the middle of a zone pass (between two pageblocks, with the compactor's free pool
    /// holding isolated pages and the caches disabled): in an explicit compaction it reaches the caller, in the
    /// background thread it ends the thread; either way the isolated pages go back to the free lists, the caches are
    /// enabled again, nothing stays frozen, the validator finds nothing, and a later compaction works.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AnExceptionInTheMiddleOfAPassLeavesNothingIsolatedOrFrozen(bool background)
    {
        using var heap = new NativeHeap(Options());
        List<BlockHandle> kept = Fragment(heap);
        int pageblocks = 0;
        heap.Compactor!.BetweenPageblocks = () =>
        {
            if (Interlocked.Increment(ref pageblocks) == 4) throw new InvalidOperationException("injected mid-pass fault");
        };
        if (!background)
        {
            Assert.Throws<InvalidOperationException>(() => heap.Compact());
        }
        else
        {
            heap.StartBackgroundCompaction();
            WaitFor(() => !heap.BackgroundCompactionRunning, "the background thread to end");
            Assert.Equal(1, heap.GetStatistics().BackgroundFailures);
        }
        Assert.True(pageblocks >= 4);
        Assert.False(heap.ThreadCachesDisabled);
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, kept);
        foreach (BlockHandle h in kept.Take(20)) heap.Pin(h).Dispose();   // nothing frozen: pins succeed at once

        heap.Compactor.BetweenPageblocks = null;
        Assert.True(heap.Compact().BytesMoved > 0);
        AssertIntact(heap, kept);
        TestHeaps.AssertValid(heap);
        kept.ForEach(heap.Free);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree());
    }

    /// <summary>
    /// A thread that dies holding pins and a filled cache. Its slot pin (a PinScope it never disposed) keeps its
    /// block pinned for good, as a leaked pin does: compaction never moves it and Dispose is refused (the heap stays
    /// usable). Its atomic pin is not the thread's: the BlockPin it handed over is released by another thread. Its
    /// cache holds no pins: a drain (here ReleaseFreeMemory) takes its slots back, and the heap stays valid.
    /// </summary>
    [Fact]
    public void AThreadThatDiesHoldingPinsAndACacheLeavesAValidHeap()
    {
        var heap = new NativeHeap(Options());
        List<BlockHandle> kept = Fragment(heap);
        BlockHandle slotPinned = default, atomicPinned = default;
        BlockPin handedOver = default;
        var t = new Thread(() =>
        {
            var mine = Enumerable.Range(0, 2000).Select(i => heap.Allocate(16 + i % 500)).ToList();
            slotPinned = mine[10];
            atomicPinned = mine[20];
            TestHeaps.Fill(heap, slotPinned);
            TestHeaps.Fill(heap, atomicPinned);
            handedOver = heap.AcquirePin(atomicPinned);
            PinScope leaked = heap.Pin(slotPinned);               // never disposed: the thread dies holding it
            Assert.Equal(TestHeaps.Pattern(slotPinned, 3), leaked.Span[3]);
            foreach (BlockHandle h in mine) if (h != slotPinned && h != atomicPinned) heap.Free(h);
        });
        t.Start();
        t.Join();
        Assert.True(heap.GetStatistics().CachedSlots > 0, "the dead thread's cache holds slots");
        nint slotAddress = heap.CurrentAddress(slotPinned), atomicAddress = heap.CurrentAddress(atomicPinned);

        heap.Compact();
        Assert.Equal(slotAddress, heap.CurrentAddress(slotPinned));
        Assert.Equal(atomicAddress, heap.CurrentAddress(atomicPinned));
        heap.ReleaseFreeMemory();                                 // drains every cache, the dead thread's too
        Assert.Equal(0, heap.GetStatistics().CachedSlots);
        TestHeaps.AssertValid(heap);
        AssertIntact(heap, kept.Append(slotPinned).Append(atomicPinned));

        handedOver.Dispose();                                     // another thread releases the atomic pin
        heap.Free(atomicPinned);
        Assert.Throws<InvalidOperationException>(heap.Dispose);   // the dead thread's slot pin is still held
        Assert.False(heap.IsDisposed);
        BlockHandle after = heap.Allocate(1000);
        TestHeaps.Fill(heap, after);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, after));
        heap.Free(after);
        kept.ForEach(heap.Free);
        Assert.Equal(1, heap.GetStatistics().LiveBlocks);         // the pinned block, which nobody can release
        TestHeaps.AssertValid(heap);
        GC.KeepAlive(heap);   // the heap is never released: its finalizer leaves a pinned heap alone (a leaked pin)
    }
}
