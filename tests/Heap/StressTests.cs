using System.Diagnostics;
using System.Globalization;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// Mutator threads allocate, write, pin, verify and free while a relocating thread migrates their blocks.
/// Every test prints its seed; set STRESS_SEED to replay one.
/// </summary>
public class StressTests(ITestOutputHelper output)
{
    private const int Mutators = 4;

    /// <summary>With <paramref name="poison"/>, free memory is poisoned and checked on reuse
    /// (<see cref="HeapOptions.PoisonFreedMemory"/>): correct code must give no detection and no validator problem
    /// after migrations, slab frees and direct compactions.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MigrationsConcurrentWithMutatorsLoseNoByteAndNeverMoveAPinnedBlock(bool poison)
    {
        int seed = Environment.GetEnvironmentVariable("STRESS_SEED") is string s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed}, poison {poison}");
        using var heap = new NativeHeap(new HeapOptions   // TestHeaps.Small's settings; direct compaction on, too
        {
            ArenaBytes = 128L << 20, PageblockPages = 64, MovableZonePercent = 75, PoisonFreedMemory = poison,
        });
        var published = new long[Mutators * 256];   // handles the relocator may move (racy, by design)
        var stop = new CancellationTokenSource();
        long migrated = 0, pinnedRejects = 0;

        var relocator = new Thread(() =>
        {
            var rng = new Random(seed ^ 0x5EED);
            while (!stop.IsCancellationRequested)
            {
                var h = new BlockHandle((ulong)Volatile.Read(ref published[rng.Next(published.Length)]));
                if (h.IsNull) continue;
                switch (heap.Migrate(h))
                {
                    case MigrateResult.Success: migrated++; break;
                    case MigrateResult.Pinned: pinnedRejects++; break;
                }
            }
        });

        var counts = new MutatorCounts();
        var mutators = Enumerable.Range(0, Mutators).Select(t => new Thread(() =>
            RunMutator(heap, seed + t, counts, maxRunBytes: 200_000, unmovableOneIn: 5, pinHoldSpins: 0,
                onAllocated: (h, rng) => Volatile.Write(ref published[t * 256 + rng.Next(256)], (long)h.Value)))).ToList();

        relocator.Start();
        try
        {
            mutators.ForEach(m => m.Start());
            mutators.ForEach(m => m.Join());
        }
        finally
        {
            stop.Cancel();
            relocator.Join(); // before the heap is disposed: Dispose must not race with other calls
        }

        output.WriteLine($"pins {counts.Pins}, migrated {migrated}, rejected as pinned {pinnedRejects}, corrupt bytes {counts.Corrupt}");
        Assert.Equal(0, counts.Corrupt);
        Assert.Equal(0, counts.PinnedMoves);
        Assert.True(migrated > 100, $"the relocator moved only {migrated} blocks");
        Assert.Equal(0, heap.GetStatistics().LiveBytes);
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree(), "every pageblock is free at the end");
        TestHeaps.AssertValid(heap);
        Assert.Equal(0, heap.GetStatistics().UseAfterFreeDetections);
    }

    /// <summary>The background compactor at full aggressiveness (no budget, 1 ms interval, proactiveness 100,
    /// immediate decommit) plus a thread running explicit full compactions, while 4 mutators pin, write and verify.
    /// With <paramref name="poison"/>, free memory is poisoned and checked: decommits, purges, consolidation and
    /// zone passes beside the mutators must give no detection and no validator problem on correct code.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BackgroundCompactionConcurrentWithMutatorsLosesNoByteAndNeverMovesAPinnedBlock(bool poison)
    {
        int seed = Environment.GetEnvironmentVariable("STRESS_SEED") is string s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed}, poison {poison}");
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 64L << 20, PageblockPages = 64, MovableZonePercent = 75,
            CompactionInterval = TimeSpan.FromMilliseconds(1), Proactiveness = 100,
            CompactionBudgetBytes = 0, CompactionBudgetTime = TimeSpan.Zero, DecommitDelay = TimeSpan.Zero,
            PoisonFreedMemory = poison,
        });
        long fullRuns = 0;
        var counts = new MutatorCounts();
        heap.StartBackgroundCompaction();
        var stop = new CancellationTokenSource();
        var explicitCompactor = new Thread(() =>
        {
            while (!stop.IsCancellationRequested) { heap.Compact(); fullRuns++; Thread.Sleep(5); }
        });
        explicitCompactor.Start();
        try
        {
            var mutators = Enumerable.Range(0, Mutators).Select(t => new Thread(() =>
                RunMutator(heap, seed + t, counts, maxRunBytes: 120_000, unmovableOneIn: 6, pinHoldSpins: 50, onAllocated: null))).ToList();
            mutators.ForEach(m => m.Start());
            mutators.ForEach(m => m.Join());
            // On a loaded machine the explicit compactions can hold the run lock through most wakes (a wake skips
            // while another compaction runs): give the background thread a bounded time to reach its count.
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (heap.GetStatistics().Compaction.CompactDaemonWake <= 10 && DateTime.UtcNow < deadline) Thread.Sleep(10);
        }
        finally
        {
            stop.Cancel();
            explicitCompactor.Join();
            heap.StopBackgroundCompaction();
        }
        CompactionStatistics c = heap.GetStatistics().Compaction;
        output.WriteLine($"pins {counts.Pins}, full runs {fullRuns}, corrupt bytes {counts.Corrupt}; {c}");
        Assert.Equal(0, counts.Corrupt);
        Assert.Equal(0, counts.PinnedMoves);
        Assert.True(c.CompactDaemonWake > 10 && c.PgmigrateSuccess > 0, "the compactors ran and moved pages");
        HeapStatistics end = heap.GetStatistics();
        Assert.True(end.LiveBytes == 0 && end.LiveBlocks == 0, $"live {end.LiveBytes} B in {end.LiveBlocks} blocks; validator: {string.Join("; ", heap.Validate().Take(5))}");
        TestHeaps.AssertValid(heap);
        Assert.True(heap.AllPageblocksFree(), "every pageblock is free at the end");
        Assert.Equal(0, end.UseAfterFreeDetections);
    }

    [Fact]
    public void ABlockPinnedWhileRelocationsRunKeepsItsAddressAndEveryWrite()
    {
        int seed = Environment.GetEnvironmentVariable("STRESS_SEED") is string s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        using NativeHeap heap = TestHeaps.Small();
        var rng = new Random(seed);
        var blocks = Enumerable.Range(0, 64).Select(_ => heap.Allocate(rng.Next(1, 512))).ToArray();
        foreach (BlockHandle h in blocks) TestHeaps.Fill(heap, h);
        var stop = new CancellationTokenSource();
        long moved = 0;
        var relocator = new Thread(() =>
        {
            var r = new Random(seed + 1);
            while (!stop.IsCancellationRequested)
                if (heap.Migrate(blocks[r.Next(blocks.Length)]) == MigrateResult.Success) moved++;
        });
        relocator.Start();
        // The writer keeps incrementing a counter inside each block while pinned: a torn or lost write shows up as
        // a counter that went backwards.
        var counters = blocks.Select(h => TestHeaps.Pattern(h, 0)).ToArray();
        var sw = Stopwatch.StartNew();
        long iterations = 0;
        try
        {
            while (sw.ElapsedMilliseconds < 1500 || moved < 50)
            {
                int i = rng.Next(blocks.Length);
                using PinScope pin = heap.Pin(blocks[i]);
                Assert.Equal(counters[i], pin.Span[0]);
                counters[i]++;
                pin.Span[0] = counters[i];
                Assert.Equal(pin.Address, heap.CurrentAddress(blocks[i]));
                iterations++;
                if (sw.ElapsedMilliseconds > 20_000) break;
            }
        }
        finally
        {
            stop.Cancel();
            relocator.Join();
        }
        output.WriteLine($"iterations {iterations}, moved {moved}");
        Assert.True(moved >= 50);
        foreach (BlockHandle h in blocks) heap.Free(h);
        TestHeaps.AssertValid(heap);
    }

    private sealed class MutatorCounts
    {
        public long Corrupt, PinnedMoves, Pins;
    }

    /// <summary>
    /// One mutator for 3 seconds: allocate (seeded mixed sizes and kinds) and write a pattern derived from the handle;
    /// pin a block, verify it, write a new first byte into it and check that its address did not change while pinned;
    /// verify and free. Frees everything it still holds at the end, verifying each block first.
    /// </summary>
    private static void RunMutator(NativeHeap heap, int seed, MutatorCounts counts, int maxRunBytes, int unmovableOneIn,
        int pinHoldSpins, Action<BlockHandle, Random>? onAllocated)
    {
        var rng = new Random(seed);
        var mine = new List<BlockHandle>();
        var firstByte = new List<byte>();   // byte 0 of each of mine: the value last written there while pinned
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 3000)
        {
            int op = rng.Next(10);
            if (op < 4 || mine.Count < 16)
            {
                long size = rng.Next(4) == 0 ? rng.Next(16 * 1024, maxRunBytes) : rng.Next(1, 2048);
                BlockKind kind = rng.Next(unmovableOneIn) == 0 ? BlockKind.Unmovable : BlockKind.Movable;
                if (!heap.TryAllocate(size, kind, out BlockHandle h)) continue;
                TestHeaps.Fill(heap, h);
                mine.Add(h);
                firstByte.Add(TestHeaps.Pattern(h, 0));
                onAllocated?.Invoke(h, rng);
            }
            else if (op < 8)
            {
                int k = rng.Next(mine.Count);
                BlockHandle h = mine[k];
                using PinScope pin = heap.Pin(h);
                Interlocked.Increment(ref counts.Pins);
                Span<byte> span = pin.Span;
                int bad = span[0] != firstByte[k] ? 1 : 0;
                for (int i = 1; i < span.Length; i += 1 + (i & 7)) if (span[i] != TestHeaps.Pattern(h, i)) bad++;
                Interlocked.Add(ref counts.Corrupt, bad);
                // A write while pinned must survive later migrations: a new value (never the one already there),
                // checked at the next pin and before the free.
                byte written = (byte)(firstByte[k] + 1 + rng.Next(255));
                span[0] = written;
                firstByte[k] = written;
                if (pinHoldSpins > 0) Thread.SpinWait(rng.Next(pinHoldSpins));
                if (heap.CurrentAddress(h) != pin.Address) Interlocked.Increment(ref counts.PinnedMoves);
            }
            else
            {
                int i = rng.Next(mine.Count);
                Interlocked.Add(ref counts.Corrupt, CountCorrupt(heap, mine[i], firstByte[i]));
                heap.Free(mine[i]);
                mine[i] = mine[^1];
                firstByte[i] = firstByte[^1];
                mine.RemoveAt(mine.Count - 1);
                firstByte.RemoveAt(firstByte.Count - 1);
            }
        }
        for (int i = 0; i < mine.Count; i++)
        {
            Interlocked.Add(ref counts.Corrupt, CountCorrupt(heap, mine[i], firstByte[i]));
            heap.Free(mine[i]);
        }
    }

    /// <summary>Bytes that differ from the block's pattern, except byte 0, which must hold the last value written.</summary>
    private static int CountCorrupt(NativeHeap heap, BlockHandle h, byte first)
    {
        using PinScope pin = heap.Pin(h);
        Span<byte> span = pin.Span;
        int bad = span[0] != first ? 1 : 0;
        for (int i = 1; i < span.Length; i++) if (span[i] != TestHeaps.Pattern(h, i)) bad++;
        return bad;
    }
}
