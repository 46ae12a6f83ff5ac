using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Compaction.Allocator;

namespace Compaction.Bench.Micro;

/// <summary>
/// Pinning cost: per invoke, pin each of <see cref="Blocks"/> 64-byte blocks (or arrays), read its first byte, unpin.
/// One operation is one pin+read+unpin. The baseline is <c>fixed</c> on an array of the pinned object heap, which is
/// free (the array never moves): it shows the loop and the read.
/// </summary>
[SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "BenchmarkDotNet owns the lifetime: the fields are made in [GlobalSetup] and disposed in " +
                    "[GlobalCleanup]; it never calls Dispose on a benchmark instance (dotnet/BenchmarkDotNet#1409).")]
public unsafe class PinUnpin
{
    public const int Blocks = 1000;
    private const int BlockSize = 64;

    private NativeHeap _heap = null!;
    private BlockHandle[] _handles = [];
    private byte[][] _arrays = [];
    private byte[][] _pohArrays = [];

    [GlobalSetup]
    public void Setup()
    {
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20 });
        _handles = new BlockHandle[Blocks];
        _arrays = new byte[Blocks][];
        _pohArrays = new byte[Blocks][];
        for (int i = 0; i < Blocks; i++)
        {
            _handles[i] = _heap.Allocate(BlockSize);
            using (PinScope pin = _heap.Pin(_handles[i])) pin.Span.Fill((byte)i);
            _arrays[i] = new byte[BlockSize];
            _arrays[i][0] = (byte)i;
            _pohArrays[i] = GC.AllocateArray<byte>(BlockSize, pinned: true);
            _pohArrays[i][0] = (byte)i;
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (BlockHandle h in _handles) _heap.Free(h);
        _heap.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Blocks, Description = "fixed on POH array")]
    public int FixedPohArray()
    {
        int sum = 0;
        byte[][] a = _pohArrays;
        for (int i = 0; i < a.Length; i++)
            fixed (byte* p = a[i]) sum += *p;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap.Pin (PinScope)")]
    public int NativeHeapPinScope()
    {
        int sum = 0;
        NativeHeap heap = _heap;
        BlockHandle[] h = _handles;
        for (int i = 0; i < h.Length; i++)
            using (PinScope pin = heap.Pin(h[i])) sum += *pin.Pointer;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "HeapContext.Pin (PinScope)")]
    public int ContextPinScope()
    {
        int sum = 0;
        HeapContext ctx = _heap.GetThreadContext();
        BlockHandle[] h = _handles;
        for (int i = 0; i < h.Length; i++)
            using (PinScope pin = ctx.Pin(h[i])) sum += *pin.Pointer;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "NativeHeap.AcquirePin (BlockPin)")]
    public int NativeHeapBlockPin()
    {
        int sum = 0;
        NativeHeap heap = _heap;
        BlockHandle[] h = _handles;
        for (int i = 0; i < h.Length; i++)
            using (BlockPin pin = heap.AcquirePin(h[i])) sum += *(byte*)pin.Address;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "GCHandle.Alloc(Pinned) + Free")]
    public int GcHandlePinned()
    {
        int sum = 0;
        byte[][] a = _arrays;
        for (int i = 0; i < a.Length; i++)
        {
            GCHandle g = GCHandle.Alloc(a[i], GCHandleType.Pinned);
            sum += *(byte*)g.AddrOfPinnedObject();
            g.Free();
        }
        return sum;
    }
}
