using System.Buffers;
using Compaction.Allocator;
using Compaction.Interop;

namespace Compaction.Tests;

/// <summary>
/// Forged and stale handles at every entry point that takes one (issue 11's battery): a million random 64-bit values
/// and a million stale handles, spread over the heap's methods, a thread context and the Interop adapter; every one
/// rejected with <see cref="InvalidBlockHandleException"/>, none accepted, and the heap still valid and every live
/// block's bytes intact afterwards.
/// </summary>
public sealed class ForgedHandleTests
{
    private const int Values = 1_000_000;

    /// <summary>Presents <paramref name="h"/> to entry point <paramref name="k"/> (of <see cref="EntryPoints"/>).</summary>
    private static void Present(NativeHeap heap, BlockHandle h, int k)
    {
        switch (k)
        {
            case 0: heap.Free(h); break;
            case 1: heap.Pin(h).Dispose(); break;
            case 2: heap.AcquirePin(h).Dispose(); break;
            case 3: heap.PinLongTerm(h).Dispose(); break;
            case 4: heap.GetSize(h); break;
            case 5: heap.GetKind(h); break;
            case 6: heap.GetStablePointer(h); break;
            case 7: heap.SetMovableOwner(h, null); break;
            case 8: { HeapContext ctx = heap.GetThreadContext(); ctx.Free(h); break; }
            case 9: { HeapContext ctx = heap.GetThreadContext(); ctx.Pin(h).Dispose(); break; }
            case 10: ((IDisposable)new NativeBlockMemoryManager(heap, h)).Dispose(); break;
            default: { Span<BlockPin> pins = [default, default]; heap.PinLongTerm([h, h], pins); break; }
        }
    }

    private const int EntryPoints = 12;

    private static (int rejected, int accepted) Batter(NativeHeap heap, IEnumerable<BlockHandle> handles)
    {
        int rejected = 0, accepted = 0, k = 0;
        foreach (BlockHandle h in handles)
        {
            try
            {
                Present(heap, h, k++ % EntryPoints);
                accepted++;
            }
            catch (InvalidBlockHandleException)
            {
                rejected++;
            }
        }
        return (rejected, accepted);
    }

    private static List<BlockHandle> LiveBlocks(NativeHeap heap)
    {
        var live = new List<BlockHandle>();
        for (int i = 0; i < 2000; i++)
        {
            BlockHandle h = heap.Allocate(i % 5 == 0 ? 20_000 : 16 + i % 500);
            TestHeaps.Fill(heap, h);
            live.Add(h);
        }
        return live;
    }

    [Fact]
    public void AMillionRandomValuesAreRejectedAtEveryEntryPoint()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20 });
        List<BlockHandle> live = LiveBlocks(heap);
        var rng = new Random(20261201);
        IEnumerable<BlockHandle> Forged()
        {
            for (int i = 0; i < Values; i++)
            {
                ulong v = (ulong)rng.NextInt64() ^ ((ulong)rng.Next(2) << 63);
                // Near misses too: a live block's index with another generation, and a live handle with one bit flipped.
                if (i % 4 == 1) v = (live[rng.Next(live.Count)].Value & 0xFFFF_FFFFUL) | ((ulong)rng.Next() << 32);
                if (i % 4 == 2) v = live[rng.Next(live.Count)].Value ^ (1UL << rng.Next(32, 64));
                yield return new BlockHandle(v);
            }
        }
        (int rejected, int accepted) = Batter(heap, Forged());
        Assert.Equal(0, accepted);
        Assert.Equal(Values, rejected);
        Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        TestHeaps.AssertValid(heap);
        live.ForEach(heap.Free);
    }

    [Fact]
    public void AMillionStaleHandlesAreRejectedAtEveryEntryPoint()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20 });
        List<BlockHandle> live = LiveBlocks(heap);
        var stale = new BlockHandle[Values];
        for (int i = 0; i < Values; i++)
        {
            BlockHandle h = heap.Allocate(i % 7 == 0 ? 20_000 : 16 + i % 700);   // entries and storage reused, caches on
            heap.Free(h);
            stale[i] = h;
        }
        var rng = new Random(7);
        for (int i = stale.Length - 1; i > 0; i--) { int j = rng.Next(i + 1); (stale[i], stale[j]) = (stale[j], stale[i]); }
        // Some of those entries are live again now, under a newer generation: their old handles must still fail.
        var reused = Enumerable.Range(0, 5000).Select(i => heap.Allocate(16 + i % 700)).ToList();
        (int rejected, int accepted) = Batter(heap, stale);
        Assert.Equal(0, accepted);
        Assert.Equal(Values, rejected);
        Assert.All(live, h => Assert.Equal(0, TestHeaps.CountCorrupt(heap, h)));
        TestHeaps.AssertValid(heap);
        reused.ForEach(heap.Free);
        live.ForEach(heap.Free);
    }

    [Fact]
    public void AHandleOfEachOfAThousandHeapsMadeInTurnIsNeverAcceptedByAnother()
    {
        var handles = new List<BlockHandle>();
        int accepted = 0, checks = 0;
        for (int n = 0; n < 1000; n++)
        {
            using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 8L << 20 });
            BlockHandle mine = heap.Allocate(64);
            // Every earlier heap's handle, at a rotating entry point; its index may well lie in a chunk this heap owns now.
            for (int i = Math.Max(0, handles.Count - 200); i < handles.Count; i++, checks++)
            {
                try { Present(heap, handles[i], checks % EntryPoints); accepted++; }
                catch (InvalidBlockHandleException) { }
            }
            handles.Add(mine);
            heap.Free(mine);
        }
        Assert.Equal(0, accepted);
        Assert.True(checks > 100_000, $"{checks} checks");
    }
}
