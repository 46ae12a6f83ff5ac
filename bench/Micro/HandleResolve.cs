using System.Diagnostics.CodeAnalysis;
using BenchmarkDotNet.Attributes;
using Compaction.Allocator;

namespace Compaction.Bench.Micro;

/// <summary>
/// The price of the handle indirection: per invoke, reach each of <see cref="Blocks"/> 64-byte blocks and read its
/// first byte (or its size). One operation is one block reached. The baseline reads through a raw pointer kept in an
/// array, which is what a caller of malloc does.
/// </summary>
[SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "BenchmarkDotNet owns the lifetime: the fields are made in [GlobalSetup] and disposed in " +
                    "[GlobalCleanup]; it never calls Dispose on a benchmark instance (dotnet/BenchmarkDotNet#1409).")]
public unsafe class HandleResolve
{
    public const int Blocks = 1000;
    private const int BlockSize = 64;

    private NativeHeap _heap = null!;
    private BlockHandle[] _movable = [];
    private BlockHandle[] _unmovable = [];
    private nint[] _pointers = [];

    [GlobalSetup]
    public void Setup()
    {
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20 });
        _movable = new BlockHandle[Blocks];
        _unmovable = new BlockHandle[Blocks];
        _pointers = new nint[Blocks];
        for (int i = 0; i < Blocks; i++)
        {
            _movable[i] = _heap.Allocate(BlockSize, BlockKind.Movable);
            using (PinScope pin = _heap.Pin(_movable[i])) pin.Span.Fill((byte)i);
            _unmovable[i] = _heap.Allocate(BlockSize, BlockKind.Unmovable);
            _pointers[i] = _heap.GetStablePointer(_unmovable[i]);
            new Span<byte>((void*)_pointers[i], BlockSize).Fill((byte)i);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (BlockHandle h in _movable) _heap.Free(h);
        foreach (BlockHandle h in _unmovable) _heap.Free(h);
        _heap.Dispose();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Blocks, Description = "raw pointer read")]
    public int RawPointerRead()
    {
        int sum = 0;
        nint[] p = _pointers;
        for (int i = 0; i < p.Length; i++) sum += *(byte*)p[i];
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "Pin + read first byte (movable)")]
    public int PinRead()
    {
        int sum = 0;
        NativeHeap heap = _heap;
        BlockHandle[] h = _movable;
        for (int i = 0; i < h.Length; i++)
            using (PinScope pin = heap.Pin(h[i])) sum += *pin.Pointer;
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "GetStablePointer + read (unmovable)")]
    public int StablePointerRead()
    {
        int sum = 0;
        NativeHeap heap = _heap;
        BlockHandle[] h = _unmovable;
        for (int i = 0; i < h.Length; i++) sum += *(byte*)heap.GetStablePointer(h[i]);
        return sum;
    }

    [Benchmark(OperationsPerInvoke = Blocks, Description = "GetSize")]
    public long GetSize()
    {
        long sum = 0;
        NativeHeap heap = _heap;
        BlockHandle[] h = _movable;
        for (int i = 0; i < h.Length; i++) sum += heap.GetSize(h[i]);
        return sum;
    }
}
