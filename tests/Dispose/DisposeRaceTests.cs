using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>
/// Dispose racing every other call (native-layout.md, "Dispose and the closing protocol"): each call either completes
/// before the memory goes away or throws <see cref="ObjectDisposedException"/>; Dispose refuses while a pin exists at
/// the moment it would free, so a pin that was granted always reads mapped memory. A failure of the code these tests
/// were written against took the process down (an access violation), hence the trait.
/// </summary>
public sealed class DisposeRaceTests(ITestOutputHelper output)
{
    /// <summary>What a hammering thread may see from a call racing Dispose: completion, the heap gone, a handle another
    /// thread freed, a block another thread pinned (its free or a long-term pin refused), or a full arena.</summary>
    private static bool Expected(Exception e) => e is ObjectDisposedException or InvalidBlockHandleException or InvalidOperationException or OutOfMemoryException;

    [Theory]
    [Trait(ProcessFatal.Trait, ProcessFatal.Value)]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void DisposeRacingEveryEntryPointNeverCrashesAndEveryCallEndsCleanly(bool caches, bool background)
    {
        int seed = Environment.TickCount;
        output.WriteLine($"seed {seed}");
        var unexpected = new List<string>();
        long completed = 0, disposedSeen = 0, refusals = 0;
        for (int round = 0; round < 12; round++)
        {
            var heap = new NativeHeap(new HeapOptions
            {
                ArenaBytes = 32L << 20, PageblockPages = 64, PerThreadCaches = caches, BackgroundCompaction = background,
                CompactionInterval = TimeSpan.FromMilliseconds(1),
            });
            using var go = new Barrier(5);
            var workers = new Thread[4];
            for (int w = 0; w < workers.Length; w++)
            {
                int id = w;
                workers[w] = new Thread(() =>
                {
                    var rng = new Random(seed + round * 31 + id);
                    var mine = new List<BlockHandle>();
                    go.SignalAndWait();
                    while (true)
                    {
                        try
                        {
                            Step(heap, rng, mine);
                            Interlocked.Increment(ref completed);
                        }
                        catch (ObjectDisposedException)
                        {
                            Interlocked.Increment(ref disposedSeen);
                            return;
                        }
                        catch (Exception e) when (Expected(e))
                        {
                        }
                        catch (Exception e)
                        {
                            lock (unexpected) unexpected.Add($"round {round}: {e.GetType().Name}: {e.Message}");
                            return;
                        }
                    }
                })
                { IsBackground = true };
                workers[w].Start();
            }
            go.SignalAndWait();
            Thread.Sleep(rngDelay(seed, round));
            // Refused while a worker holds a pin at that moment; the workers release theirs within a step.
            while (true)
            {
                try
                {
                    heap.Dispose();
                    break;
                }
                catch (InvalidOperationException)
                {
                    refusals++;
                    Thread.Yield();
                }
            }
            foreach (Thread t in workers) Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a worker hung after Dispose");
            Assert.Throws<ObjectDisposedException>(() => heap.Allocate(16));
        }
        output.WriteLine($"{completed} calls completed, {disposedSeen} threads saw the heap disposed, {refusals} refused Dispose calls");
        Assert.True(unexpected.Count == 0, string.Join("\n", unexpected.Take(10)));
        Assert.True(completed > 0);

        static int rngDelay(int seed, int round) => new Random(seed ^ round).Next(0, 8);
    }

    /// <summary>One random call on the heap, touching the block's bytes wherever a pin grants them.</summary>
    private static void Step(NativeHeap heap, Random rng, List<BlockHandle> mine)
    {
        switch (rng.Next(12))
        {
            case 0:
            case 1:
                {
                    long size = rng.Next(4) == 0 ? rng.Next(17_000, 200_000) : rng.Next(1, 2_000);
                    if (heap.TryAllocate(size, rng.Next(4) == 0 ? BlockKind.Unmovable : BlockKind.Movable, out BlockHandle h)) mine.Add(h);
                    break;
                }
            case 2:
                if (mine.Count > 0) { int i = rng.Next(mine.Count); BlockHandle h = mine[i]; mine.RemoveAt(i); heap.Free(h); }
                break;
            case 3:
                if (mine.Count > 0)
                {
                    using PinScope p = heap.Pin(mine[rng.Next(mine.Count)]);
                    p.Span.Fill(7);
                }
                break;
            case 4:
                if (mine.Count > 0)
                {
                    using BlockPin p = heap.AcquirePin(mine[rng.Next(mine.Count)]);
                    p.Span[0] = 1;
                    p.Span[^1] = 2;
                }
                break;
            case 5:
                if (mine.Count > 0)
                {
                    using BlockPin p = heap.PinLongTerm(mine[rng.Next(mine.Count)]);
                    p.Span[0] = 3;
                }
                break;
            case 6:
                if (mine.Count > 0) heap.GetSize(mine[rng.Next(mine.Count)]);
                break;
            case 7:
                if (rng.Next(8) == 0) heap.Compact();
                break;
            case 8:
                if (rng.Next(4) == 0) heap.ReleaseFreeMemory();
                else heap.RunCompactionStep(TimeSpan.FromSeconds(rng.Next(100)));
                break;
            case 9:
                {
                    HeapContext c = heap.GetThreadContext();
                    BlockHandle h = c.Allocate(rng.Next(1, 4_000));
                    using (PinScope p = c.Pin(h)) p.Span[0] = 9;
                    c.Free(h);
                    break;
                }
            case 10:
                heap.GetStatistics();
                break;
            default:
                if (mine.Count > 0) heap.SetMovableOwner(mine[rng.Next(mine.Count)], null);
                break;
        }
    }

    [Fact]
    public void DisposeFromInsideAnEventListenerOfTheSameCallIsRefusedNotAHang()
    {
        // A call section of this heap on this thread (here: a Free's slow path) holding Dispose off: a Dispose from
        // inside it would wait for itself.
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64, PerThreadCaches = false });
        BlockHandle h = heap.Allocate(100);
        var owner = new DisposingOwner(heap);
        heap.SetMovableOwner(h, owner);
        heap.Compact();
        heap.Free(h);
        Assert.All(owner.Results, r => Assert.IsType<InvalidOperationException>(r));
    }

    private sealed class DisposingOwner(NativeHeap heap) : IMovableBlockOwner
    {
        public readonly List<Exception> Results = [];
        public bool Isolate(BlockHandle h)
        {
            try { heap.Dispose(); } catch (Exception e) { Results.Add(e); }
            return false;
        }
        public OwnerMigrateResult Migrate(BlockHandle h, nint from, nint to) => OwnerMigrateResult.Success;
        public void Putback(BlockHandle h) { }
    }
}
