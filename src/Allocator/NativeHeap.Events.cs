using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;

namespace Compaction.Allocator;

// Where the heap raises its events (NativeHeapEventSource): each behind an IsEnabled check, none on a fast path.
public sealed partial class NativeHeap
{
    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    /// <summary>True when a listener wants events of <paramref name="keywords"/> at <paramref name="level"/>: one
    /// load and a compare when nobody listens.</summary>
    private static bool Tracing(EventKeywords keywords, EventLevel level = EventLevel.Informational) => Events.IsEnabled(level, keywords);

    /// <summary>An allocation the arena could not serve (the slow path's failure; rare, so it checks the listener).</summary>
    private void NoteAllocationFailed(long size, BlockKind kind)
    {
        if (Tracing(NativeHeapEventSource.Keywords.Allocation, EventLevel.Warning)) Events.AllocationFailed(_id, size, kind.ToString());
    }

    /// <summary>Raises the use-after-free detections waiting in the poison (already counted), on the allocating
    /// thread, at the end of an allocation, when it holds no heap lock: a listener's code may call into the heap.
    /// Ones the compactor found (a destination slot) are raised by the next allocation.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RaiseUseAfterFreeEvents()
    {
        while (_poison.HasPending && _poison.TryTakePending(out (nint first, long changed) d))
            if (Tracing(NativeHeapEventSource.Keywords.Allocation, EventLevel.Error)) Events.UseAfterFreeDetected(_id, d.first, d.changed);
    }

    /// <summary>Direct compaction for a run allocation that failed, with its pass traced when a listener wants it.</summary>
    private int DirectCompact(int pages, uint index)
    {
        if (!Tracing(NativeHeapEventSource.Keywords.Compaction)) return _compactor!.DirectCompact(pages, index);
        CompactionStatistics before = _compactor!.Counters.Snapshot();
        long t0 = Stopwatch.GetTimestamp();
        Events.CompactionStart(_id, "direct", "async_then_sync_light");
        int start = _compactor.DirectCompact(pages, index);
        Events.Pass(_id, "direct", "async_then_sync_light", _compactor.Counters.Snapshot() - before, t0);
        return start;
    }
}
