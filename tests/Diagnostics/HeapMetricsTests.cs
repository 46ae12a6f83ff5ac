using System.Diagnostics.Metrics;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace Compaction.Tests;

/// <summary>The heap's figures through System.Diagnostics.Metrics (<see cref="HeapMetrics"/>): a MeterListener and
/// OpenTelemetry's in-memory exporter read the same values <see cref="NativeHeap.GetStatistics"/> returns.</summary>
public sealed class HeapMetricsTests
{
    /// <summary>Every measurement of <paramref name="heap"/> one collection takes, by instrument (and event tag).</summary>
    private static Dictionary<string, double> Collect(NativeHeap heap)
    {
        var values = new Dictionary<string, double>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) => { if (instrument.Meter.Name == HeapMetrics.MeterName) l.EnableMeasurementEvents(instrument); };
        void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            long? id = null;
            string? ev = null;
            foreach (KeyValuePair<string, object?> t in tags)
            {
                if (t.Key == HeapMetrics.HeapTag) id = (long)t.Value!;
                if (t.Key is HeapMetrics.EventTag or HeapMetrics.PinKindTag or HeapMetrics.FailureTag) ev = (string)t.Value!;
            }
            if (id == heap.Id) values[ev == null ? instrument.Name : instrument.Name + "/" + ev] = value;
        }
        listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<int>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<double>((i, v, t, _) => Record(i, v, t));
        listener.Start();
        listener.RecordObservableInstruments();
        return values;
    }

    [Fact]
    public void AMeterListenerReadsWhatTheStatisticsSay()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20 });
        var blocks = Enumerable.Range(0, 2000).Select(i => heap.Allocate(100 + i % 700)).ToList();
        for (int i = 0; i < blocks.Count; i += 2) heap.Free(blocks[i]);
        heap.Compact();
        BlockHandle lt = heap.Allocate(64);
        using (heap.AcquirePin(lt)) Assert.Throws<InvalidOperationException>(() => heap.PinLongTerm(lt));   // one failure counted
        BlockPin pin = heap.PinLongTerm(lt);
        Thread.Sleep((int)HeapMetrics.SnapshotAge + 50);   // past the snapshot a collection reuses
        Dictionary<string, double> m = Collect(heap);
        HeapStatistics s = heap.GetStatistics();
        Assert.Equal(s.LiveBytes, m["nativeheap.memory.live"]);
        Assert.Equal(s.LiveBlocks, m["nativeheap.blocks.live"]);
        Assert.Equal(s.CommittedBytes, m["nativeheap.memory.committed"]);
        Assert.Equal(s.CommittedBytes - s.PurgedFreeBytes, m["nativeheap.memory.resident"]);
        Assert.Equal(s.ReservedBytes, m["nativeheap.memory.reserved"]);
        Assert.Equal(s.MetadataBytes, m["nativeheap.memory.metadata"]);
        Assert.Equal(1, m["nativeheap.pins.long_term"]);
        Assert.Equal(1, m["nativeheap.pins.held/atomic"]);   // the long-term pin is an atomic pin
        Assert.Equal(0, m["nativeheap.pins.held/slot"]);
        Assert.Equal(s.FragmentationScore, m["nativeheap.fragmentation.score"]);
        Assert.Equal((double)(s.CommittedBytes - s.PurgedFreeBytes) / s.LiveBytes, m["nativeheap.waste.ratio"], 6);
        Assert.Equal(s.Compaction.PgmigrateSuccess, m["nativeheap.compaction.events/pgmigrate_success"]);
        Assert.Equal(s.Compaction.PagesCompacted, m["nativeheap.compaction.events/pages_compacted"]);
        Assert.Equal(s.Compaction.CompactStall, m["nativeheap.compaction.events/compact_stall"]);
        Assert.True(s.Compaction.PgmigrateSuccess > 0);
        Assert.Equal(s.Compaction.BytesMoved, m["nativeheap.compaction.moved"]);
        Assert.Equal(s.Compaction.BytesDecommitted, m["nativeheap.compaction.decommitted"]);
        Assert.Equal(s.Compaction.WasteBytesMoved, m["nativeheap.background.waste_moved"]);
        Assert.Equal(s.Compaction.BackgroundCpuNanoseconds / 1e9, m["nativeheap.background.cpu_time"], 9);
        // Bytes and time are quantities with their own units, never counted as events.
        foreach (string quantity in new[] { "bytes_moved", "bytes_decommitted", "waste_bytes_moved", "background_cpu_nanoseconds" })
            Assert.False(m.ContainsKey("nativeheap.compaction.events/" + quantity), quantity + " is not an event");
        Assert.Equal(s.CommitFailures, m["nativeheap.failures/commit"]);
        Assert.Equal(s.DecommitFailures, m["nativeheap.failures/decommit"]);
        Assert.Equal(s.AdviceFailures, m["nativeheap.failures/advice"]);
        Assert.Equal(s.BackgroundFailures, m["nativeheap.failures/background"]);
        Assert.Equal(s.UseAfterFreeDetections, m["nativeheap.failures/use_after_free"]);
        Assert.Equal(1, m["nativeheap.failures/long_term_pin"]);
        Assert.Equal(s.HandleTableGrowthFailures, m["nativeheap.failures/handle_table"]);
        pin.Dispose();
        heap.Free(lt);
        for (int i = 1; i < blocks.Count; i += 2) heap.Free(blocks[i]);
    }

    [Fact]
    public void ADisposedHeapIsNoLongerMeasuredAndACollectionRacingDisposeIsSafe()
    {
        var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20 });
        heap.Free(heap.Allocate(10));
        Assert.NotEmpty(Collect(heap));
        using var stop = new CancellationTokenSource();
        var collector = new Thread(() => { while (!stop.IsCancellationRequested) Collect(heap); });
        collector.Start();
        Thread.Sleep(20);
        heap.Dispose();
        stop.Cancel();
        collector.Join();
        Assert.Empty(Collect(heap));
    }

    [Fact]
    public void OpenTelemetrysInMemoryExporterSeesTheInstruments()
    {
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20 });
        BlockHandle h = heap.Allocate(1000);
        var exported = new List<Metric>();
        using (MeterProvider provider = Sdk.CreateMeterProviderBuilder().AddMeter(HeapMetrics.MeterName).AddInMemoryExporter(exported).Build())
            provider.ForceFlush();
        var names = exported.Select(x => x.Name).ToHashSet();
        foreach (string n in new[] { "nativeheap.memory.live", "nativeheap.memory.resident", "nativeheap.waste.ratio", "nativeheap.compaction.events", "nativeheap.background.cpu_time" })
            Assert.Contains(n, names);
        Metric live = exported.First(x => x.Name == "nativeheap.memory.live");
        Assert.Equal("By", live.Unit);
        Assert.Equal("By", exported.First(x => x.Name == "nativeheap.compaction.moved").Unit);
        Assert.Equal("By", exported.First(x => x.Name == "nativeheap.compaction.decommitted").Unit);
        Assert.Equal("s", exported.First(x => x.Name == "nativeheap.background.cpu_time").Unit);
        Assert.Equal("{event}", exported.First(x => x.Name == "nativeheap.compaction.events").Unit);
        bool found = false;
        foreach (ref readonly MetricPoint p in live.GetMetricPoints())
            foreach (KeyValuePair<string, object?> t in p.Tags)
                if (t.Key == HeapMetrics.HeapTag && (long)t.Value! == heap.Id) { Assert.Equal(1000, p.GetGaugeLastValueLong()); found = true; }
        Assert.True(found, "the heap's own series is exported");
        heap.Free(h);
    }
}
