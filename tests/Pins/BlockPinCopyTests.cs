using System.Runtime.CompilerServices;
using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>A copy of a released <see cref="BlockPin"/> never shows another block: its pooled record may already pin a
/// later block, so every getter either returns this pin's own block or throws <see cref="ObjectDisposedException"/>.</summary>
public sealed class BlockPinCopyTests
{
    [Fact]
    public void AReleasedPinsCopyNeverReturnsTheBlockALaterPinOfItsRecordHolds()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 16L << 20, PageblockPages = 64 });
        BlockHandle a = heap.Allocate(100), b = heap.Allocate(3000);
        nint addressA;
        using (BlockPin p = heap.AcquirePin(a)) addressA = p.Address;
        StrongBox<BlockPin>? published = null;   // a copy of the pin, published whole
        int stop = 0;
        long wrong = 0, reads = 0;
        var reader = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                StrongBox<BlockPin>? box = Volatile.Read(ref published);
                if (box == null) continue;
                BlockPin copy = box.Value;
                try
                {
                    nint address = copy.Address;
                    long length = copy.Length;
                    BlockHandle handle = copy.Handle;
                    if ((address != addressA || length != 100 || handle != a)) Interlocked.Increment(ref wrong);
                    reads++;
                }
                catch (ObjectDisposedException)
                {
                }
            }
        });
        reader.Start();
        for (int i = 0; i < 200_000; i++)
        {
            BlockPin pa = heap.AcquirePin(a);
            Volatile.Write(ref published, new StrongBox<BlockPin>(pa));   // the reader reads through the copy
            pa.Dispose();
            using BlockPin pb = heap.AcquirePin(b);   // likely the same pooled record, now for b
        }
        Volatile.Write(ref stop, 1);
        reader.Join();
        Assert.Equal(0, wrong);
        // Deterministically: the record of a released pin is refilled for b, and the old copy still says a or throws.
        BlockPin old = heap.AcquirePin(a);
        BlockPin copyOfOld = old;
        old.Dispose();
        using BlockPin later = heap.AcquirePin(b);
        Assert.Throws<ObjectDisposedException>(() => copyOfOld.Address);
        Assert.Throws<ObjectDisposedException>(() => copyOfOld.Length);
        Assert.Throws<ObjectDisposedException>(() => copyOfOld.Handle);
        Assert.False(copyOfOld.IsHeld);
        Assert.Equal(b, later.Handle);
    }
}
