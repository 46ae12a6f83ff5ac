using System.Diagnostics.Metrics;

namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// Every heap's figures as <see cref="System.Diagnostics.Metrics"/> instruments of one meter,
/// <see cref="MeterName"/>, each measurement tagged with the heap's <see cref="NativeHeap.Id"/> (<c>nativeheap.id</c>):
/// what <c>dotnet-counters monitor --counters Compaction.NativeHeap</c> and OpenTelemetry's
/// <c>AddMeter("Compaction.NativeHeap")</c> read. Every instrument is observable: nothing is measured, and nothing
/// costs anything, until a listener collects, and then each heap's statistics are taken once per collection.
/// </summary>
/// <remarks>
/// Instruments (OpenTelemetry naming: dotted, lowercase, units in UCUM): gauges <c>nativeheap.memory.live</c>,
/// <c>.committed</c>, <c>.resident</c> (committed less purged free memory), <c>.reserved</c>, <c>.metadata</c> (By),
/// <c>nativeheap.blocks.live</c>, <c>nativeheap.waste.ratio</c> (resident over live), <c>nativeheap.fragmentation.score</c>
/// (%, extfrag at pageblock order), <c>nativeheap.pins.long_term</c>, <c>nativeheap.pins.held</c> (tag
/// <c>nativeheap.pin.kind</c>: slot or atomic); counters <c>nativeheap.memory.decommitted</c>,
/// <c>nativeheap.memory.purged</c> (By), <c>nativeheap.compaction.events</c> ({event}: one series per compaction event
/// counter, the kernel's name in the <c>nativeheap.event</c> tag: compact_stall, pgmigrate_success, ...; the byte and
/// time counters are not events and are not listed there), <c>nativeheap.compaction.moved</c>,
/// <c>nativeheap.compaction.decommitted</c>, <c>nativeheap.background.waste_moved</c> (By) and
/// <c>nativeheap.background.cpu_time</c> (s, the background thread's own processor time). A heap is listed from its construction to its Dispose (weakly: an abandoned heap drops out when
/// collected).
/// </remarks>
public static class HeapMetrics
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "Compaction.NativeHeap";

    /// <summary>The tag that names the heap of a measurement.</summary>
    public const string HeapTag = "nativeheap.id";

    /// <summary>The tag that names the compaction counter of a <c>nativeheap.compaction.events</c> measurement.</summary>
    public const string EventTag = "nativeheap.event";

    private static readonly Lock s_lock = new();

    /// <summary>True when the calling thread holds the metrics lock (for the asserts of what runs under it).</summary>
    internal static bool LockHeldByCurrentThread => s_lock.IsHeldByCurrentThread;
    private static readonly List<WeakReference<HeapInspector>> s_heaps = [];   // one per heap, weakly: the heap holds it
    private static readonly Meter s_meter = new(MeterName, "1.0");

    /// <summary>The counters that are quantities, not events: published as instruments of their own, with their unit
    /// (By, s), never under <c>nativeheap.compaction.events</c>.</summary>
    private static readonly CompactionCounter[] s_quantities =
        [CompactionCounter.BytesMoved, CompactionCounter.BytesDecommitted, CompactionCounter.WasteBytesMoved, CompactionCounter.BackgroundCpuNanoseconds,
         CompactionCounter.BackgroundChargedCpuNanoseconds, CompactionCounter.LimitBytesMoved, CompactionCounter.LimitBytesDecommitted, CompactionCounter.LimitNanoseconds];

    /// <summary>The event counters (every counter but the quantities) and their kernel spelling.</summary>
    private static readonly (CompactionCounter counter, string name)[] s_events = Enum.GetValues<CompactionCounter>()
        .Where(c => c != CompactionCounter.Count && Array.IndexOf(s_quantities, c) < 0)
        .Select(c => (c, SnakeCase(c.ToString()))).ToArray();

    static HeapMetrics()
    {
        Gauge("nativeheap.memory.live", "By", "Bytes of live blocks (as requested).", s => s.LiveBytes);
        Gauge("nativeheap.memory.committed", "By", "Bytes of the arena committed.", s => s.CommittedBytes);
        Gauge("nativeheap.memory.resident", "By", "Committed bytes less free memory purged since: what the arena keeps resident.", s => s.CommittedBytes - s.PurgedFreeBytes);
        Gauge("nativeheap.memory.reserved", "By", "Address space reserved for the arena.", s => s.ReservedBytes);
        Gauge("nativeheap.memory.metadata", "By", "Native metadata: page descriptors, pageblock bits, handle table.", s => s.MetadataBytes);
        Gauge("nativeheap.blocks.live", "{block}", "Live blocks.", s => s.LiveBlocks);
        Gauge("nativeheap.pins.long_term", "{pin}", "Long-term pins held.", s => s.LongTermPins);
        s_meter.CreateObservableGauge("nativeheap.waste.ratio", () => Observe(s => (double)(s.CommittedBytes - s.PurgedFreeBytes) / Math.Max(1, s.LiveBytes)),
                                      "1", "Resident bytes over live bytes: what the waste-driven background compactor keeps between its thresholds.");
        s_meter.CreateObservableGauge("nativeheap.fragmentation.score", () => Observe(s => s.FragmentationScore),
                                      "%", "The kernel's extfrag score at pageblock order for the movable zone.");
        s_meter.CreateObservableCounter("nativeheap.memory.decommitted", () => Observe(s => s.DecommittedBytes), "By", "Bytes decommitted since the heap was created.");
        s_meter.CreateObservableCounter("nativeheap.memory.purged", () => Observe(s => s.PurgedBytes), "By", "Bytes of free pages purged since the heap was created.");
        s_meter.CreateObservableCounter("nativeheap.compaction.moved", () => Observe(s => s.Compaction.BytesMoved), "By", "Bytes the compactor moved.");
        s_meter.CreateObservableCounter("nativeheap.compaction.decommitted", () => Observe(s => s.Compaction.BytesDecommitted), "By",
                                        "Bytes of pageblocks that compaction emptied and decommitted.");
        s_meter.CreateObservableCounter("nativeheap.background.waste_moved", () => Observe(s => s.Compaction.WasteBytesMoved), "By",
                                        "Bytes the background compactor moved on its waste trigger.");
        s_meter.CreateObservableCounter("nativeheap.background.cpu_time", () => Observe(s => s.Compaction.BackgroundCpuNanoseconds / 1e9),
                                        "s", "Processor time the background compactor thread used.");
        s_meter.CreateObservableCounter("nativeheap.background.charged_cpu_time", () => Observe(s => s.Compaction.BackgroundChargedCpuNanoseconds / 1e9),
                                        "s", "Processor time of the whole process charged to the background compactor (what paces it).");
        Gauge("nativeheap.memory.limit", "By", "The memory limit (HeapOptions.MemoryLimit), 0 for none: committed bytes never pass it.", s => s.MemoryLimit);
        s_meter.CreateObservableCounter("nativeheap.limit.moved", () => Observe(s => s.Compaction.LimitBytesMoved), "By",
                                        "Bytes that allocations moved to stay under the memory limit.");
        s_meter.CreateObservableCounter("nativeheap.limit.decommitted", () => Observe(s => s.Compaction.LimitBytesDecommitted), "By",
                                        "Bytes that allocations decommitted to stay under the memory limit.");
        s_meter.CreateObservableCounter("nativeheap.limit.time", () => Observe(s => s.Compaction.LimitNanoseconds / 1e9), "s",
                                        "Time allocations spent keeping the memory limit (slices of freeing and compacting on the allocating thread).");
        s_meter.CreateObservableGauge("nativeheap.pins.held", ObservePins, "{pin}",
                                      "Pins held: slot pins (PinScope) and atomic pins (BlockPin, long-term pins), tag nativeheap.pin.kind; a walk of the heap's entries per collection.");
        s_meter.CreateObservableCounter("nativeheap.compaction.events", ObserveEvents, "{event}",
                                        "The compaction event counters, one series per counter (tag nativeheap.event: the kernel's names); bytes and time are instruments of their own.");
        s_meter.CreateObservableCounter("nativeheap.failures", ObserveFailures, "{failure}",
                                        "Refusals and faults since the heap was created, tag nativeheap.failure: commit, decommit (and purge), advice (huge-page advice), background (exceptions that ended the background thread), use_after_free (PoisonFreedMemory detections), long_term_pin, handle_table (the handle table could not grow).");
    }

    private static void Gauge(string name, string unit, string description, Func<HeapStatistics, long> value) =>
        s_meter.CreateObservableGauge(name, () => Observe(value), unit, description);

    /// <summary>Called by a new heap with its inspector (held weakly: a heap dropped without Dispose drops out when it
    /// is collected, since nothing but the heap holds its inspector). Takes the metrics lock.</summary>
    internal static void Register(HeapInspector heap)
    {
        lock (s_lock)
        {
            s_heaps.RemoveAll(w => !w.TryGetTarget(out HeapInspector? h) || h.IsClosed);
            s_heaps.Add(new WeakReference<HeapInspector>(heap));
        }
    }

    /// <summary>The live heaps' statistics, taken once per collection (a collection reads every instrument in turn,
    /// within milliseconds: a snapshot younger than <see cref="SnapshotAge"/> is reused).</summary>
    private static List<(long id, HeapStatistics stats, (int slot, int atomic) pins)> Snapshots()
    {
        var result = new List<(long, HeapStatistics, (int, int))>();
        lock (s_lock)
        {
            foreach (WeakReference<HeapInspector> w in s_heaps)
            {
                if (!w.TryGetTarget(out HeapInspector? heap) || heap.IsClosed) continue;
                try
                {
                    HeapStatistics stats = heap.MetricsSnapshot(TimeSpan.FromMilliseconds(SnapshotAge));
                    result.Add((heap.Id, stats, heap.MetricsPins));
                }
                catch (ObjectDisposedException)
                {
                    // Disposed between the check and the snapshot: not listed this time.
                }
            }
        }
        return result;
    }

    /// <summary>How long one statistics snapshot serves the instruments of a collection, in milliseconds of each
    /// heap's clock.</summary>
    internal const long SnapshotAge = 200;

    private static IEnumerable<Measurement<T>> Observe<T>(Func<HeapStatistics, T> value) where T : struct
    {
        foreach ((long id, HeapStatistics stats, _) in Snapshots())
            yield return new Measurement<T>(value(stats), new KeyValuePair<string, object?>(HeapTag, id));
    }

    private static IEnumerable<Measurement<long>> ObserveEvents()
    {
        foreach ((long id, HeapStatistics stats, _) in Snapshots())
            foreach ((CompactionCounter counter, string name) in s_events)
                yield return new Measurement<long>(stats.Compaction.Get(counter),
                    new KeyValuePair<string, object?>(HeapTag, id), new KeyValuePair<string, object?>(EventTag, name));
    }

    /// <summary>The tag that names the kind of a <c>nativeheap.failures</c> measurement.</summary>
    public const string FailureTag = "nativeheap.failure";

    private static readonly (string name, Func<HeapStatistics, long> value)[] s_failures =
    [
        ("commit", s => s.CommitFailures), ("decommit", s => s.DecommitFailures), ("advice", s => s.AdviceFailures),
        ("background", s => s.BackgroundFailures), ("use_after_free", s => s.UseAfterFreeDetections),
        ("long_term_pin", s => s.LongTermPinFailures), ("handle_table", s => s.HandleTableGrowthFailures),
    ];

    private static IEnumerable<Measurement<long>> ObserveFailures()
    {
        foreach ((long id, HeapStatistics stats, _) in Snapshots())
            foreach ((string name, Func<HeapStatistics, long> value) in s_failures)
                yield return new Measurement<long>(value(stats),
                    new KeyValuePair<string, object?>(HeapTag, id), new KeyValuePair<string, object?>(FailureTag, name));
    }

    /// <summary>The tag that says which pins a <c>nativeheap.pins.held</c> measurement counts: slot (PinScope) or atomic
    /// (BlockPin, long-term pins and the Interop adapters).</summary>
    public const string PinKindTag = "nativeheap.pin.kind";

    private static IEnumerable<Measurement<int>> ObservePins()
    {
        foreach ((long id, _, (int slot, int atomic)) in Snapshots())
        {
            yield return new Measurement<int>(slot, new KeyValuePair<string, object?>(HeapTag, id), new KeyValuePair<string, object?>(PinKindTag, "slot"));
            yield return new Measurement<int>(atomic, new KeyValuePair<string, object?>(HeapTag, id), new KeyValuePair<string, object?>(PinKindTag, "atomic"));
        }
    }

    /// <summary>CompactStall -> compact_stall (the kernel's /proc/vmstat spelling).</summary>
    private static string SnakeCase(string name)
    {
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < name.Length; i++)
        {
            if (char.IsUpper(name[i]) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(name[i]));
        }
        return sb.ToString();
    }
}
