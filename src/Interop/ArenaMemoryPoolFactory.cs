using System.Buffers;
using Compaction.Allocator;
using Microsoft.AspNetCore.Connections;

namespace Compaction.Interop;

/// <summary>
/// Gives an ASP.NET Core 10 server (Kestrel's transports) its buffer pools from a <see cref="NativeHeap"/>:
/// register it as <c>services.AddSingleton&lt;IMemoryPoolFactory&lt;byte&gt;&gt;(new ArenaMemoryPoolFactory())</c>.
/// Every pool it creates shares the factory's heap and long-term pins its buffers (a server hands them to
/// sockets), so they live in unmovable memory and leave the movable zone to compaction.
/// </summary>
/// <remarks>With the parameterless constructor the factory makes and owns a heap (<see cref="HeapOptions"/>
/// defaults, 1 GiB reserved) and starts its background thread, so that memory the server stops using goes back to
/// the OS by itself (see <see cref="ArenaMemoryPool"/>); <see cref="Dispose"/> disposes that heap once every buffer
/// is returned. Given a heap, the factory uses it as it is and does not own it.</remarks>
public sealed class ArenaMemoryPoolFactory : IMemoryPoolFactory<byte>, IDisposable
{
    private readonly bool _ownsHeap;
    private readonly ArenaMemoryPoolOptions _options;

    /// <summary>A factory over a heap of its own (<paramref name="heapOptions"/>, or the defaults), with the
    /// background thread started.</summary>
    public ArenaMemoryPoolFactory(HeapOptions? heapOptions = null, ArenaMemoryPoolOptions? poolOptions = null)
        : this(new NativeHeap(heapOptions ?? new HeapOptions()), poolOptions, ownsHeap: true)
    {
        Heap.StartBackgroundCompaction();
    }

    /// <summary>A factory over <paramref name="heap"/>, which it does not own.</summary>
    public ArenaMemoryPoolFactory(NativeHeap heap, ArenaMemoryPoolOptions? poolOptions = null) : this(heap, poolOptions, ownsHeap: false) { }

    private ArenaMemoryPoolFactory(NativeHeap heap, ArenaMemoryPoolOptions? poolOptions, bool ownsHeap)
    {
        ArgumentNullException.ThrowIfNull(heap);
        Heap = heap;
        _ownsHeap = ownsHeap;
        ArenaMemoryPoolOptions o = poolOptions ?? new ArenaMemoryPoolOptions();
        _options = new ArenaMemoryPoolOptions { DefaultBufferSize = o.DefaultBufferSize, MaxBufferSize = o.MaxBufferSize, LongTermPins = poolOptions?.LongTermPins ?? true };
    }

    /// <summary>The heap every pool of this factory rents from.</summary>
    public NativeHeap Heap { get; }

    /// <summary>A new pool over the factory's heap (the server's <paramref name="options"/> only name its owner).</summary>
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new ArenaMemoryPool(Heap, _options);

    /// <summary>Disposes the heap when the factory owns it (refused, with <see cref="InvalidOperationException"/>, while
    /// buffers are still rented: their pins hold the heap).</summary>
    public void Dispose()
    {
        if (_ownsHeap) Heap.Dispose();
    }
}
