using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Os;

namespace Compaction.Allocator;

// Where the heap raises its events (NativeHeapEventSource): each behind an IsEnabled check, none on a fast path.
public sealed partial class NativeHeap
{
    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    /// <summary>True when a listener wants events of <paramref name="keywords"/> at <paramref name="level"/>: one
    /// load and a compare when nobody listens.</summary>
    private static bool Tracing(EventKeywords keywords, EventLevel level = EventLevel.Informational) => Events.IsEnabled(level, keywords);

    /// <summary>An allocation the arena could not serve (the slow path's failure; rare, so it checks the listener).
    /// Under a memory limit that stood in the way it is also counted as a limit failure, with its reason.</summary>
    private void NoteAllocationFailed(long size, BlockKind kind)
    {
        if (Tracing(NativeHeapEventSource.Keywords.Allocation, EventLevel.Warning)) Events.AllocationFailed(_id, size, kind.ToString());
        if (!LimitInTheWay()) return;
        Interlocked.Increment(ref _counters[CompactionCounter.LimitFailures]);
        if (Tracing(NativeHeapEventSource.Keywords.MemoryLimit, EventLevel.Warning)) Events.LimitFailed(_id, size, _memoryLimit, LimitFailureReason(size));
    }

    /// <summary>True when a memory limit is set and committed memory with the charged metadata is within a pageblock
    /// (and its descriptors) of it, so a failed allocation failed for want of a commit the limit refused, not because
    /// the arena's range is full.</summary>
    private bool LimitInTheWay() =>
        _memoryLimit != 0 && _memory.ChargedBytes > _memoryLimit - PageblockBytes - _memory.DescriptorBytesPerPageblock;

    /// <summary>True when committed memory is within a pageblock of the soft limit (the waste ratio's).</summary>
    private bool SoftLimitInTheWay() => _memory.CommittedBytes > _memory.SoftLimitBytes - PageblockBytes;

    private long PageblockBytes => (long)_options.PageSize * _options.PageblockPages;

    /// <summary>Where an allocation that found no room is in its search for room (<see cref="NextRoomAttempt"/>).</summary>
    private struct RoomSearch
    {
        public bool SoftLimitUpdated;   // the soft limit was set from today's live bytes
        public int Slices;              // slices of freeing and compacting run
        public bool PassedSoftLimit;    // the last try passes the soft limit (the caller restores SoftLimitApplies)
    }

    /// <summary>
    /// Decides whether an allocation that found no room tries again, doing first what may make room
    /// (native-layout.md, section 9, "The memory limit"): a soft limit set when live bytes were lower is raised to
    /// today's (and the allocation retries at once); a commit the memory limit or the soft limit refused runs slices
    /// of freeing and compacting, at most <see cref="MaxLimitSlices"/>, and only while each makes progress (a slice
    /// that moved, released and left nothing ends the search). The memory limit is never passed; the soft limit gives
    /// way for this allocation's last try when the slices end (the caller set <see cref="ArenaMemory.SoftLimitApplies"/>
    /// and restores it). False when nothing is left to try. Caller is in a call section.
    /// </summary>
    private bool NextRoomAttempt(ref RoomSearch room)
    {
        if (_softLimitRatio != 0 && !room.SoftLimitUpdated)
        {
            room.SoftLimitUpdated = true;
            if (UpdateSoftLimit()) return true;
        }
        bool hard = LimitInTheWay(), soft = !hard && _softLimitRatio != 0 && !room.PassedSoftLimit && SoftLimitInTheWay();
        if (!hard && !soft)
        {
            // No limit stands in the way now. Under a memory limit the refusal may still have been the limit's, a
            // moment ago: another thread has since given memory back (its slice's decommits). Retry, bounded like
            // the slices; without a limit the arena itself has no room.
            if (_memoryLimit == 0 || room.Slices >= MaxLimitSlices) return false;
            room.Slices++;
            return true;
        }
        // The soft limit's slices are compaction on the allocating thread: off with direct compaction (the memory
        // limit's are not: without them it could not be kept).
        int maxSlices = hard || _options.DirectCompaction ? MaxLimitSlices : 0;
        if (room.Slices < maxSlices && MakeRoomUnderLimit())
        {
            room.Slices++;
            return true;
        }
        if (!soft) return false;
        room.PassedSoftLimit = true;
        ArenaMemory.SoftLimitApplies = false;
        return true;
    }

    /// <summary>
    /// Sets the soft limit from the live bytes now: the waste ratio's share above them (<see cref="HeapOptions.WasteHighRatio"/>
    /// times live, and at least <see cref="HeapOptions.WasteMinBytes"/> above live), in whole pageblocks. True when
    /// that raised it. Sums the threads' live counters (a racy read: a stale sum costs one refusal or one pageblock).
    /// </summary>
    private bool UpdateSoftLimit()
    {
        long live = _caches.LiveTotals().bytes, pb = PageblockBytes;
        long target = Math.Max((long)(live * _softLimitRatio), live + _options.WasteMinBytes);
        target = (target + pb - 1) / pb * pb;
        long old = _memory.SoftLimitBytes;
        _memory.SoftLimitBytes = target;
        return target > old;
    }

    /// <summary>Why the memory limit could not be kept for an allocation of <paramref name="size"/>: live bytes do
    /// not fit under it, or committed memory is held by pinned and unmovable blocks that compaction cannot move. For a
    /// failure's exception and event only (it walks the heap's entries to count pins).</summary>
    private string LimitFailureReason(long size)
    {
        (long live, _) = _caches.LiveTotals();
        long metadata = _memory.ChargedBytes - _memory.CommittedBytes;
        if (live + size + metadata > _memoryLimit)
            return $"the live bytes ({live:N0}), this block ({size:N0}) and the heap's metadata ({metadata:N0}) do not fit under the memory limit ({_memoryLimit:N0} bytes)";
        (int slot, int atomic) = CountPinsByKind();
        return $"the memory limit ({_memoryLimit:N0} bytes) is held by memory compaction could not free: {_memory.CommittedBytes:N0} bytes " +
               $"committed for {live:N0} live, and {metadata:N0} of metadata; {slot + atomic} pin(s) ({Volatile.Read(ref _longTermPins)} long-term) and every unmovable " +
               "block keep their pages in place";
    }

    /// <summary>The <see cref="OutOfMemoryException"/> of a failed allocation, with the memory limit's reason when the
    /// limit stood in the way.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void ThrowOutOfMemory(long size, BlockKind kind)
    {
        if (LimitInTheWay())
            throw new OutOfMemoryException($"The heap cannot serve a {kind} block of {size} bytes under its memory limit: {LimitFailureReason(size)}.");
        ThrowHelper.OutOfMemory(size, kind);
    }

    /// <summary>Slices an allocation may run to stay under the memory limit before it fails, or under the soft limit
    /// before it passes it (it stops earlier at a slice that moved, released and left nothing): each is bounded by
    /// <see cref="HeapOptions.CompactionSliceTime"/> of compaction plus the decommits it makes possible, so an
    /// allocation spends at most 32 slices (16 ms at the default slice time, plus the decommits) keeping a limit.
    /// The soft limit had a cap of 4 once: the refill of a churn then passed it about 40 times per 100 MiB refilled
    /// (a pageblock each), while the slices were still making progress.</summary>
    private const int MaxLimitSlices = 32;

    /// <summary>
    /// One slice of the memory limit's work on an allocating thread whose allocation found no room under the limit
    /// (native-layout.md, section 9, "The memory limit"): wholly free pageblocks (and kept empty slabs) are decommitted
    /// at once; when that gives nothing back, the compactor consolidates slabs and compacts the movable zone for at
    /// most a slice, and what that emptied is decommitted. True when it moved or gave back anything, or ran out of
    /// budget with work left (the allocation retries). Caller is in a call section (no cache section) and holds no heap lock. Counted and traced per slice.
    /// </summary>
    private bool MakeRoomUnderLimit()
    {
        long t0 = Stopwatch.GetTimestamp();
        long released = _reclaimer.ReleaseEmptiedPageblocks(), moved = 0;
        bool unfinished = false;   // the slice's budget ran out: there is more to do, the next slice resumes
        if (released == 0 && _compactor != null)
        {
            (moved, unfinished) = _compactor.LimitSlice(Math.Max(1, (long)(_options.CompactionSliceTime.TotalSeconds * Stopwatch.Frequency)));
            released = _reclaimer.ReleaseEmptiedPageblocks();
        }
        long elapsed = Stopwatch.GetTimestamp() - t0;
        Interlocked.Increment(ref _counters[CompactionCounter.LimitSlices]);
        Interlocked.Add(ref _counters[CompactionCounter.LimitBytesDecommitted], released);
        Interlocked.Add(ref _counters[CompactionCounter.LimitNanoseconds], (long)(elapsed * (1e9 / Stopwatch.Frequency)));
        if (Tracing(NativeHeapEventSource.Keywords.MemoryLimit))
            Events.LimitSlice(_id, released, moved, elapsed * 1000.0 / Stopwatch.Frequency);
        return released > 0 || moved > 0 || unfinished;
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
        CompactionStatistics before = CountersNow();
        long t0 = Stopwatch.GetTimestamp();
        Events.CompactionStart(_id, "direct", "async_then_sync_light");
        int start = _compactor!.DirectCompact(pages, index);
        Events.Pass(_id, "direct", "async_then_sync_light", CountersNow() - before, t0);
        return start;
    }
}
