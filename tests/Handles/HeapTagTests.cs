using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>Handles of two heaps are never confused, however many heaps live at once or have lived before.</summary>
/// <remarks>In the process-wide collection: the heaps here take handle chunks from the same process-wide table as
/// every other test's heaps.</remarks>
[Collection(ProcessWideResources.Name)]
public sealed class HeapTagTests
{
    private static NativeHeap Tiny() => TestHeaps.Small(caches: false, arenaBytes: 1L << 20, pageblockPages: 16);

    [Fact]
    public void NoLiveHeapAcceptsAnotherLiveHeapsHandlesWhenThreeHundredHeapsLive()
    {
        var heaps = new List<NativeHeap>();
        var handles = new List<BlockHandle>();
        var confusions = new List<string>();
        try
        {
            for (int i = 0; i < 300; i++) AddHeap(heaps, handles);
            // Heaps come and go while the others live: what a disposed heap gave up must not go to a twin of a live one.
            for (int i = 0; i < 60; i++)
            {
                heaps[i].Free(handles[i]);
                heaps[i].Dispose();
            }
            heaps.RemoveRange(0, 60);
            handles.RemoveRange(0, 60);
            for (int i = 0; i < 60; i++) AddHeap(heaps, handles);

            for (int j = 0; j < heaps.Count; j++)
                for (int i = 0; i < heaps.Count; i++)
                {
                    if (i == j) continue;
                    bool accepted = heaps[j].IsLive(handles[i]);
                    if (accepted) confusions.Add($"heap {j} accepts heap {i}'s {handles[i]}");
                    // Free is tried on the first pairs that were accepted and on a sample of the others (an exception
                    // per pair would be slow).
                    if (accepted && confusions.Count < 10 || (i + j) % 17 == 0)
                    {
                        Exception? e = Record.Exception(() => heaps[j].Free(handles[i]));
                        if (e is not InvalidBlockHandleException)
                            confusions.Add($"heap {j}.Free(heap {i}'s {handles[i]}) threw {e?.GetType().Name ?? "nothing"}");
                    }
                }
            for (int i = 0; i < heaps.Count; i++)
            {
                if (!heaps[i].IsLive(handles[i])) { confusions.Add($"heap {i}'s own block was freed by another heap"); continue; }
                if (TestHeaps.CountCorrupt(heaps[i], handles[i]) != 0) confusions.Add($"heap {i}'s block lost its bytes");
            }
        }
        finally
        {
            DisposeAll(heaps, handles);
        }
        Assert.True(confusions.Count == 0, $"{confusions.Count} confusions, e.g. {string.Join("; ", confusions.Take(5))}");
    }

    [Fact]
    public void AHeapNeverAcceptsTheHandlesOfAHeapDisposedBeforeIt()
    {
        var dead = new List<BlockHandle>();
        var confusions = new List<string>();
        for (int n = 0; n < 800; n++)
        {
            using NativeHeap heap = Tiny();
            BlockHandle mine = heap.Allocate(100);
            for (int i = 0; i < dead.Count; i++)
                if (heap.IsLive(dead[i])) confusions.Add($"heap {n} accepts the {dead[i]} of disposed heap {i}");
            // A handful through Free and Pin as well (each rejection is an exception, so not all of them).
            for (int i = Math.Max(0, dead.Count - 300); i < dead.Count; i += 30)
            {
                Exception? free = Record.Exception(() => heap.Free(dead[i]));
                if (free is not InvalidBlockHandleException) confusions.Add($"heap {n}.Free(dead heap {i}'s handle) threw {free?.GetType().Name ?? "nothing"}");
                Exception? pin = Record.Exception(() => heap.Pin(dead[i]).Dispose());
                if (pin is not InvalidBlockHandleException) confusions.Add($"heap {n}.Pin(dead heap {i}'s handle) threw {pin?.GetType().Name ?? "nothing"}");
            }
            if (heap.IsLive(mine)) heap.Free(mine);
            dead.Add(mine);
            if (confusions.Count > 20) break;
        }
        Assert.True(confusions.Count == 0, $"{confusions.Count} confusions, e.g. {string.Join("; ", confusions.Take(5))}");
    }

    [Fact]
    public void TwoLiveHeapsNeverAcceptEachOthersHandlesWhileSixHundredOthersComeAndGo()
    {
        using NativeHeap a = TestHeaps.Small(caches: false);
        BlockHandle ha = a.Allocate(100);
        for (int i = 0; i < 600; i++)
        {
            using NativeHeap b = Tiny();
            BlockHandle hb = b.Allocate(100);
            Assert.Equal(InvalidHandleReason.Foreign, Assert.Throws<InvalidBlockHandleException>(() => b.Free(ha)).Reason);
            Assert.Equal(InvalidHandleReason.Foreign, Assert.Throws<InvalidBlockHandleException>(() => a.Free(hb)).Reason);
            b.Free(hb);
        }
        a.Free(ha);
    }

    /// <summary>Dispose frees the blocks still live in its handle chunks (their generations move on) before giving the
    /// chunks back, so the heap that takes a chunk next rejects the dead heap's handles as stale even once its own
    /// block sits in the very same entry.</summary>
    [Fact]
    public void TheNextOwnerOfADisposedHeapsChunkRejectsHandlesOfBlocksLiveAtDispose()
    {
        NativeHeap dead = Tiny();
        BlockHandle h = dead.Allocate(16);
        uint index = HandleBits.Index(h.Value);
        dead.Dispose();
        var heaps = new List<NativeHeap>();
        try
        {
            // Chunks are given out most recently returned first, but another test may return one in between.
            NativeHeap? next = null;
            var tenants = new List<BlockHandle>();
            for (int attempt = 0; attempt < 64 && next == null; attempt++)
            {
                NativeHeap t = Tiny();
                heaps.Add(t);
                BlockHandle probe = t.Allocate(16);
                if (t.Handles.Owns(index)) { next = t; tenants.Add(probe); }
            }
            Assert.True(next != null, "no heap got the chunk back");
            while (HandleBits.Index(tenants[^1].Value) != index && tenants.Count < HandleTable.ChunkEntries)
                tenants.Add(next.Allocate(16));
            BlockHandle tenant = tenants[^1];
            Assert.Equal(index, HandleBits.Index(tenant.Value));
            TestHeaps.Fill(next, tenant);

            Assert.False(next.IsLive(h));
            Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => next.Free(h)).Reason);
            Assert.Equal(InvalidHandleReason.Stale, Assert.Throws<InvalidBlockHandleException>(() => next.Pin(h).Dispose()).Reason);
            Assert.True(next.IsLive(tenant));
            Assert.Equal(0, TestHeaps.CountCorrupt(next, tenant));
            foreach (BlockHandle t in tenants) next.Free(t);
            TestHeaps.AssertValid(next);
        }
        finally
        {
            foreach (NativeHeap t in heaps) t.Dispose();
        }
    }

    private static void AddHeap(List<NativeHeap> heaps, List<BlockHandle> handles)
    {
        NativeHeap heap = Tiny();
        heaps.Add(heap);
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        handles.Add(h);
    }

    private static void DisposeAll(List<NativeHeap> heaps, List<BlockHandle> handles)
    {
        for (int i = 0; i < heaps.Count; i++)
        {
            if (i < handles.Count && heaps[i].IsLive(handles[i])) heaps[i].Free(handles[i]);
            heaps[i].Dispose();
        }
    }
}
