using System.Diagnostics.Metrics;
using Compaction.Allocator;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace Compaction.Interop;

/// <summary>Settings of <see cref="ArenaMemoryWebHostBuilderExtensions.UseArenaMemory(IWebHostBuilder, ArenaMemoryOptions?)"/>.</summary>
public sealed class ArenaMemoryOptions
{
    /// <summary>The heap's options (the defaults reserve 1 GiB of address space, committed as it is used).</summary>
    public HeapOptions Heap { get; set; } = new();

    /// <summary>Whether the heap's background thread runs (<see cref="NativeHeap.StartBackgroundCompaction"/>): it
    /// compacts, and gives memory the server stopped using back to the OS. Default true.</summary>
    public bool BackgroundCompaction { get; set; } = true;

    /// <summary>The size of a connection buffer rented without a size hint. Default 4096 (Kestrel's).</summary>
    public int DefaultBufferSize { get; set; } = 4096;

    /// <summary>How many returned connection buffers of <see cref="DefaultBufferSize"/> the pool keeps pinned for the
    /// next rents (<see cref="ArenaMemoryPoolOptions.CachedBuffers"/>). Default 1024 (4 MiB of buffers at most); 0 frees
    /// every buffer at its return.</summary>
    public int CachedBuffers { get; set; } = 1024;

    /// <summary>How often the pool gives back kept buffers that were not needed since the last time, and, after a
    /// period without any rent, returns the heap's free memory to the OS (<see cref="NativeHeap.ReleaseFreeMemory"/>,
    /// once per idle spell: a server that went idle gives its memory back with or without the background thread).
    /// Default 10 s; the clock is the heap's (<see cref="HeapOptions.TimeProvider"/>).</summary>
    public TimeSpan IdleTrimPeriod { get; set; } = TimeSpan.FromSeconds(10);
}

/// <summary>The arena behind a server registered with <c>UseArenaMemory</c>: its heap and the pool every connection
/// buffer comes from. A singleton of the host's services, disposed with the host.</summary>
public sealed class ArenaServerMemory : IDisposable
{
    internal ArenaServerMemory(ArenaMemoryOptions options, IMeterFactory? meters)
    {
        Heap = new NativeHeap(options.Heap);
        try
        {
            Pool = new ArenaMemoryPool(Heap, new ArenaMemoryPoolOptions
            {
                LongTermPins = true, DefaultBufferSize = options.DefaultBufferSize, Owner = "kestrel", MeterFactory = meters,
                CachedBuffers = options.CachedBuffers, CacheTrimPeriod = options.IdleTrimPeriod, ReleaseFreeMemoryWhenIdle = true,
                TimeProvider = options.Heap.TimeProvider,
            });
            if (options.BackgroundCompaction) Heap.StartBackgroundCompaction();
        }
        catch
        {
            Heap.Dispose();
            throw;
        }
    }

    /// <summary>The heap (owned: disposed with the host).</summary>
    public NativeHeap Heap { get; }

    /// <summary>The pool of the transport's connection buffers (long-term pins).</summary>
    public ArenaMemoryPool Pool { get; }

    /// <summary>Stops the pool and disposes the heap (which stops its background thread). A buffer still rented at
    /// that moment (a connection the server did not close within its shutdown timeout) holds a pin, and the heap
    /// refuses to unmap memory under a pin: the heap is then left to the process's end rather than failing the host's
    /// disposal.</summary>
    public void Dispose()
    {
        Pool.Dispose();
        try
        {
            Heap.Dispose();
        }
        catch (InvalidOperationException)
        {
            // pins still held (see above): nothing was released, and nothing is torn
        }
    }
}

/// <summary>
/// The one registration of arena memory for Kestrel: <c>builder.WebHost.UseArenaMemory()</c>.
/// </summary>
public static class ArenaMemoryWebHostBuilderExtensions
{
    /// <summary>
    /// Serves Kestrel's connections from arena memory: registers an <see cref="ArenaServerMemory"/> (a heap with its
    /// background thread started unless <see cref="ArenaMemoryOptions.BackgroundCompaction"/> is false, and a
    /// long-term pool over it; disposed with the host) and the <see cref="ArenaSocketTransportFactory"/> over that
    /// pool, which takes Kestrel's TCP (IPv4, IPv6, dual mode) and Unix domain socket endpoints. Call it in any order
    /// with <c>UseKestrel</c>/<c>ConfigureKestrel</c> (the transport is the last one registered, which Kestrel prefers).
    /// </summary>
    public static IWebHostBuilder UseArenaMemory(this IWebHostBuilder builder, ArenaMemoryOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        options ??= new ArenaMemoryOptions();
        return builder.ConfigureServices(services =>
        {
            services.AddSingleton(sp => new ArenaServerMemory(options, sp.GetService<IMeterFactory>()));
            services.AddSingleton<IConnectionListenerFactory>(sp => new ArenaSocketTransportFactory(sp.GetRequiredService<ArenaServerMemory>().Pool));
        });
    }

    /// <summary>As <see cref="UseArenaMemory(IWebHostBuilder, ArenaMemoryOptions?)"/>, with the options set by
    /// <paramref name="configure"/>.</summary>
    public static IWebHostBuilder UseArenaMemory(this IWebHostBuilder builder, Action<ArenaMemoryOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        var options = new ArenaMemoryOptions();
        configure(options);
        return builder.UseArenaMemory(options);
    }
}
