using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace Compaction.Interop;

/// <summary>
/// The instruments of an <see cref="ArenaMemoryPool"/> under the names and meter ASP.NET Core 10's own pools use
/// (meter <c>Microsoft.AspNetCore.MemoryPool</c>: <c>aspnetcore.memory_pool.pooled</c>, <c>.allocated</c>,
/// <c>.evicted</c>, <c>.rented</c>, in bytes, tagged <c>aspnetcore.memory_pool.owner</c> when the pool has an owner),
/// so the dashboards that show Kestrel's pool show the arena pool.
/// </summary>
/// <remarks>What the names mean: <c>rented</c> counts every rent; <c>allocated</c> the rents the heap served (a block
/// allocated and pinned), <c>evicted</c> the blocks freed back to the heap, <c>pooled</c> what the pool's cache keeps
/// now (<see cref="ArenaMemoryPoolOptions.CachedBuffers"/>; always 0 without one, every return then freed at once), so
/// <c>allocated - evicted</c> is what is rented or kept now. The heap's own meter (<c>Compaction.NativeHeap</c>)
/// tells what the heap keeps resident.</remarks>
internal sealed class ArenaPoolMetrics
{
    /// <summary>Kestrel's meter name for its memory pools.</summary>
    public const string MeterName = "Microsoft.AspNetCore.MemoryPool";

    public const string PooledName = "aspnetcore.memory_pool.pooled";
    public const string AllocatedName = "aspnetcore.memory_pool.allocated";
    public const string EvictedName = "aspnetcore.memory_pool.evicted";
    public const string RentedName = "aspnetcore.memory_pool.rented";
    public const string OwnerTag = "aspnetcore.memory_pool.owner";

    private static readonly ConditionalWeakTable<Meter, ArenaPoolMetrics> s_byMeter = new();
    private static readonly Lazy<ArenaPoolMetrics> s_shared = new(() => new ArenaPoolMetrics(new Meter(MeterName)));

    private readonly UpDownCounter<long> _pooled;
    private readonly Counter<long> _allocated, _evicted, _rented;

    private ArenaPoolMetrics(Meter meter)
    {
        _pooled = meter.CreateUpDownCounter<long>(PooledName, "By", "Number of bytes currently pooled and available for reuse (the arena pool's cache of returned buffers).");
        _allocated = meter.CreateCounter<long>(AllocatedName, "By", "Total number of bytes allocated by the memory pool (blocks the arena pool allocated from its heap).");
        _evicted = meter.CreateCounter<long>(EvictedName, "By", "Total number of bytes evicted from the memory pool (blocks the arena pool freed back to its heap).");
        _rented = meter.CreateCounter<long>(RentedName, "By", "Total number of bytes rented from the memory pool.");
    }

    /// <summary>The instruments on a meter of <paramref name="factory"/> (one set per meter), or on the library's own
    /// static meter when <paramref name="factory"/> is null.</summary>
    public static ArenaPoolMetrics For(IMeterFactory? factory)
    {
        if (factory == null) return s_shared.Value;
        Meter meter = factory.Create(MeterName);
        return s_byMeter.GetValue(meter, static m => new ArenaPoolMetrics(m));
    }

    /// <summary>True when some listener collects an instrument: the pool then pays for the tags.</summary>
    public bool Enabled => _allocated.Enabled || _evicted.Enabled || _rented.Enabled || _pooled.Enabled;

    /// <summary>A rent; <paramref name="allocated"/> when the heap served it (not the cache).</summary>
    public void Rented(int bytes, string? owner, bool allocated)
    {
        TagList tags = Tags(owner);
        if (_rented.Enabled) _rented.Add(bytes, tags);
        if (allocated && _allocated.Enabled) _allocated.Add(bytes, tags);
    }

    /// <summary>A returned buffer the cache keeps.</summary>
    public void Pooled(int bytes, string? owner)
    {
        if (_pooled.Enabled) _pooled.Add(bytes, Tags(owner));
    }

    /// <summary>A kept buffer left the cache (rented again, or evicted).</summary>
    public void Unpooled(int bytes, string? owner)
    {
        if (_pooled.Enabled) _pooled.Add(-bytes, Tags(owner));
    }

    /// <summary>A block freed back to the heap.</summary>
    public void Evicted(int bytes, string? owner)
    {
        if (_evicted.Enabled) _evicted.Add(bytes, Tags(owner));
    }

    private static TagList Tags(string? owner)
    {
        var tags = new TagList();
        if (!string.IsNullOrEmpty(owner)) tags.Add(OwnerTag, owner);
        return tags;
    }
}
