using System.Buffers;
using System.Diagnostics;
using Compaction.Allocator;
using Microsoft.AspNetCore.Connections;

namespace Compaction.Interop;

/// <summary>
/// Makes buffer pools (<see cref="IMemoryPoolFactory{T}"/>) over a <see cref="NativeHeap"/>. Every pool it creates
/// shares the factory's heap and long-term pins its buffers (they go to sockets), so they live in unmovable memory
/// and leave the movable zone to compaction.
/// </summary>
/// <remarks><para>For Kestrel, do not register this factory yourself: use
/// <see cref="ArenaMemoryWebHostBuilderExtensions.UseArenaMemory(Microsoft.AspNetCore.Hosting.IWebHostBuilder, ArenaMemoryOptions?)"/>, which registers the heap, the pool and the
/// arena's own transport together. Kestrel's own socket transport (ASP.NET Core 10) cannot send an answer spanning
/// more than one buffer from native memory (its gathered send takes arrays: "Buffer backed by array was expected",
/// a reset connection), so <see cref="Create"/> refuses it with an <see cref="InvalidOperationException"/> naming
/// that fix, which stops the host at start-up (Kestrel creates its pools when it binds).</para></remarks>
/// <remarks>
/// <para>With the parameterless constructor the factory makes and owns a heap (<see cref="HeapOptions"/>
/// defaults, 1 GiB reserved) and starts its background thread, so that memory the server stops using goes back to
/// the OS by itself (see <see cref="ArenaMemoryPool"/>); <see cref="Dispose"/> disposes that heap once every buffer
/// is returned. Given a heap, the factory uses it as it is and does not own it.</para></remarks>
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
        _options = new ArenaMemoryPoolOptions
        {
            DefaultBufferSize = o.DefaultBufferSize, MaxBufferSize = o.MaxBufferSize, LongTermPins = poolOptions?.LongTermPins ?? true,
            Owner = o.Owner, MeterFactory = o.MeterFactory,
        };
    }

    /// <summary>The heap every pool of this factory rents from.</summary>
    public NativeHeap Heap { get; }

    /// <summary>A new pool over the factory's heap (the server's <paramref name="options"/> only name its owner, which
    /// tags the pool's metrics).</summary>
    /// <exception cref="InvalidOperationException">The caller is Kestrel's own socket transport, which would reset every
    /// answer larger than one buffer: use <c>builder.WebHost.UseArenaMemory()</c> instead.</exception>
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
    {
        if (CalledByKestrelsSocketTransport())
            throw new InvalidOperationException(KestrelSocketTransportMessage);
        ArenaMemoryPoolOptions o = _options;
        if (options?.Owner is { } owner)
            o = new ArenaMemoryPoolOptions { DefaultBufferSize = o.DefaultBufferSize, MaxBufferSize = o.MaxBufferSize, LongTermPins = o.LongTermPins, Owner = owner, MeterFactory = o.MeterFactory };
        return new ArenaMemoryPool(Heap, o);
    }

    internal const string KestrelSocketTransportMessage =
        "ArenaMemoryPoolFactory was registered with Kestrel's own socket transport, which cannot send an answer larger than " +
        "one buffer from native memory (it resets the connection: \"Buffer backed by array was expected\"). Remove the " +
        "IMemoryPoolFactory<byte> registration and call builder.WebHost.UseArenaMemory() instead: it registers the arena heap, " +
        "its pool and the arena socket transport (gathered sends from native memory) together.";

    /// <summary>True when a frame of Kestrel's socket transport (namespace
    /// <c>Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets</c>) is on the stack: it creates its pools from the
    /// factory while it binds. A stack walk, paid once per pool created, never per rent.</summary>
    private static bool CalledByKestrelsSocketTransport()
    {
        foreach (StackFrame frame in new StackTrace(1, false).GetFrames())
        {
            string? ns = frame.GetMethod()?.DeclaringType?.Namespace;
            if (ns != null && ns.StartsWith("Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets", StringComparison.Ordinal)) return true;
        }
        return false;
    }

    /// <summary>Disposes the heap when the factory owns it (refused, with <see cref="InvalidOperationException"/>, while
    /// buffers are still rented: their pins hold the heap).</summary>
    public void Dispose()
    {
        if (_ownsHeap) Heap.Dispose();
    }
}
