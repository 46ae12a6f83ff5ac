using System.Diagnostics.Metrics;
using Compaction.Allocator;
using Compaction.Interop;

namespace Compaction.Tests;

/// <summary>The arena pool reports under Kestrel's pool instruments (meter Microsoft.AspNetCore.MemoryPool), in
/// bytes, tagged with the pool's owner.</summary>
public sealed class ArenaPoolMetricsTests
{
    [Fact]
    public void RentsAndReturnsAreCountedUnderKestrelsNames()
    {
        using NativeHeap heap = TestHeaps.Small();
        string owner = "metrics-test-" + Guid.NewGuid().ToString("N");
        var sums = new Dictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Microsoft.AspNetCore.MemoryPool") l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            foreach (KeyValuePair<string, object?> tag in tags)
                if (tag.Key == "aspnetcore.memory_pool.owner" && (string?)tag.Value == owner)
                    lock (sums) sums[instrument.Name] = sums.GetValueOrDefault(instrument.Name) + value;
        });
        listener.Start();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true, Owner = owner });
        var a = pool.Rent(4096);
        var b = pool.Rent(10_000);
        a.Dispose();
        Assert.Equal(14_096, sums.GetValueOrDefault("aspnetcore.memory_pool.rented"));
        Assert.Equal(14_096, sums.GetValueOrDefault("aspnetcore.memory_pool.allocated"));
        Assert.Equal(4096, sums.GetValueOrDefault("aspnetcore.memory_pool.evicted"));
        b.Dispose();
        Assert.Equal(14_096, sums.GetValueOrDefault("aspnetcore.memory_pool.evicted"));
        Assert.Equal(0, sums.GetValueOrDefault("aspnetcore.memory_pool.pooled"));
    }

    [Fact]
    public void TheFactoryTagsItsPoolsWithTheServersOwner()
    {
        using NativeHeap heap = TestHeaps.Small();
        long rented = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Microsoft.AspNetCore.MemoryPool" && instrument.Name == "aspnetcore.memory_pool.rented") l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            foreach (KeyValuePair<string, object?> tag in tags)
                if (tag.Key == "aspnetcore.memory_pool.owner" && (string?)tag.Value == "factory-owner") Interlocked.Add(ref rented, value);
        });
        listener.Start();
        using var factory = new ArenaMemoryPoolFactory(heap);
        using var pool = factory.Create(new Microsoft.AspNetCore.Connections.MemoryPoolOptions { Owner = "factory-owner" });
        pool.Rent(5000).Dispose();
        Assert.Equal(5000, Interlocked.Read(ref rented));
    }
}
