using System.Diagnostics.Tracing;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Tests;

/// <summary>The heap's EventSource (<see cref="NativeHeapEventSource"/>): each event's payload equals the counters of
/// what it reports, read by an in-process EventListener.</summary>
public sealed class NativeHeapEventsTests
{
    private sealed class Recorder : EventListener
    {
        private readonly List<EventWrittenEventArgs> _events = [];
        public long HeapId;

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == NativeHeapEventSource.SourceName) EnableEvents(source, EventLevel.Verbose, EventKeywords.All);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.Payload is { Count: > 0 } p && p[0] is long id && id == HeapId) lock (_events) _events.Add(e);
        }

        public List<EventWrittenEventArgs> Named(string name)
        {
            lock (_events) return _events.Where(e => e.EventName == name).ToList();
        }
    }

    private static object? Field(EventWrittenEventArgs e, string name) => e.Payload![e.PayloadNames!.IndexOf(name)];

    [Fact]
    public void EveryEventCarriesTheCountersOfWhatItReports()
    {
        using var recorder = new Recorder();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, WasteHighRatio = 0, Proactiveness = 0 });
        recorder.HeapId = heap.Id;
        var blocks = Enumerable.Range(0, 4000).Select(i => heap.Allocate(i % 3 == 0 ? 40_000 : 300)).ToList();
        for (int i = 0; i < blocks.Count; i += 2) heap.Free(blocks[i]);

        CompactionStatistics run = heap.Compact();
        EventWrittenEventArgs stop = Assert.Single(recorder.Named("CompactionStop"));
        Assert.Single(recorder.Named("CompactionStart"));
        Assert.Equal("explicit", Field(stop, "trigger"));
        Assert.Equal("sync_full", Field(stop, "mode"));
        Assert.Equal(run.PgmigrateSuccess, Field(stop, "pagesMigrated"));
        Assert.Equal(run.BytesMoved, Field(stop, "bytesMoved"));
        Assert.True(run.BytesMoved > 0);

        HeapStatistics before = heap.GetStatistics();
        heap.ReleaseFreeMemory();
        HeapStatistics after = heap.GetStatistics();
        EventWrittenEventArgs released = Assert.Single(recorder.Named("Released"));
        Assert.Equal("explicit", Field(released, "path"));
        Assert.Equal(after.DecommittedBytes - before.DecommittedBytes, Field(released, "bytesDecommitted"));
        Assert.Equal(after.PurgedBytes - before.PurgedBytes, Field(released, "bytesPurged"));

        heap.RunCompactionStep(TimeSpan.FromSeconds(1));
        EventWrittenEventArgs wake = Assert.Single(recorder.Named("BackgroundWake"));
        Assert.Equal("idle", Field(wake, "trigger"));
        HeapStatistics now = heap.GetStatistics();
        Assert.Equal((double)(now.CommittedBytes - now.PurgedFreeBytes) / now.LiveBytes, (double)Field(wake, "wasteRatio")!, 6);

        BlockHandle m = heap.Allocate(5000);
        using (heap.PinLongTerm(m)) { }
        EventWrittenEventArgs lt = Assert.Single(recorder.Named("LongTermPinMigration"));
        Assert.Equal(1L, Field(lt, "blocks"));
        Assert.Equal(5000L, Field(lt, "bytes"));

        Assert.False(heap.TryAllocate(heap.MaxBlockSize, BlockKind.Unmovable, out _));
        EventWrittenEventArgs failed = Assert.Single(recorder.Named("AllocationFailed"));
        Assert.Equal(heap.MaxBlockSize, Field(failed, "size"));
        Assert.Equal("Unmovable", Field(failed, "kind"));

        heap.Free(m);
        for (int i = 1; i < blocks.Count; i += 2) heap.Free(blocks[i]);
    }

    [Fact]
    public void MigrationFailuresAreReportedByReason()
    {
        using var recorder = new Recorder();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 64L << 20, WasteHighRatio = 0, Proactiveness = 0 });
        recorder.HeapId = heap.Id;
        var runs = Enumerable.Range(0, 200).Select(_ => heap.Allocate(40_000)).ToList();
        for (int i = 0; i < runs.Count; i += 2) heap.Free(runs[i]);
        var pins = runs.Where((_, i) => i % 2 == 1).Take(40).Select(heap.AcquirePin).ToList();
        CompactionStatistics run = heap.Compact();
        long reported = recorder.Named("MigrationFailed").Where(e => (string)Field(e, "reason")! == "pinned_skipped").Sum(e => (long)Field(e, "count")!);
        Assert.Equal(run.PinnedPagesSkipped, reported);
        Assert.True(reported > 0);
        pins.ForEach(p => p.Dispose());
        for (int i = 1; i < runs.Count; i += 2) heap.Free(runs[i]);
    }
}
