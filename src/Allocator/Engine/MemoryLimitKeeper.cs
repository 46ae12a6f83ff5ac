using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pins;
using Compaction.Allocator.Reclaim;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Engine;

/// <summary>What the memory limit and the soft limit use of the heap's options (validated by the API): the limit in
/// whole pageblocks (0 for none), the soft limit's multiple of live bytes (WasteLowRatio while WasteHighRatio is on; 0 for none) and its floor
/// above live (WasteMinBytes), a pageblock's bytes, a slice's time, whether direct compaction is on, and the clock.</summary>
internal sealed record LimitSettings(
    long MemoryLimit, double SoftLimitRatio, long WasteMinBytes, long PageblockBytes, TimeSpan SliceTime, bool DirectCompaction,
    TimeProvider Clock);

/// <summary>Where an allocation that found no room is in its search for room (<see cref="MemoryLimitKeeper.NextRoomAttempt"/>).</summary>
internal struct RoomSearch
{
    public bool SoftLimitUpdated;   // the soft limit was set from today's live bytes
    public int Slices;              // slices of freeing and compacting run
    public int FruitlessSlices;     // slices under the memory limit in a row that moved, drained and released nothing
    public bool PassedSoftLimit;    // the last try passes the soft limit (the caller restores SoftLimitApplies)
}

/// <summary>
/// The memory limit and the soft limit on the allocating threads (native-layout.md, section 9, "The memory limit"):
/// whether a limit stands in the way of a failed allocation, the slices of freeing and compacting an allocation runs
/// to make room under it, the soft limit's level, and a failure's reason (counted and traced).
/// </summary>
/// <remarks>Takes no lock of its own: a slice takes the reclaimer's and the compactor's (RunLock), which the caller
/// must not hold; every read of the committed and live counters is racy and says why that is safe.</remarks>
internal sealed class MemoryLimitKeeper(
    LimitSettings settings, long heapId, ArenaMemory memory, ThreadCaches caches, LiveFootprint footprint, HandleTable handles, Reclaimer reclaimer,
    Compactor? compactor, CompactionCounters counters, LongTermPinCounts longTermPins)
{
    private readonly LimitSettings _s = settings;
    private readonly long _id = heapId;
    private readonly ArenaMemory _memory = memory;
    private readonly ThreadCaches _caches = caches;
    private readonly LiveFootprint _footprint = footprint;
    private readonly HandleTable _handles = handles;
    private readonly Reclaimer _reclaimer = reclaimer;
    private readonly Compactor? _compactor = compactor;
    private readonly CompactionCounters _counters = counters;
    private readonly LongTermPinCounts _longTermPins = longTermPins;

    /// <summary>Slices an allocation may run under the soft limit before it passes it (it stops earlier at a slice
    /// that moved, released and left nothing): each is bounded by the slice time of compaction plus the decommits it
    /// makes possible, so an allocation spends at most 32 slices (16 ms at the default slice time, plus the decommits)
    /// keeping the soft limit. It had a cap of 4 once: the refill of a churn then passed it about 40 times per 100 MiB
    /// refilled (a pageblock each), while the slices were still making progress.</summary>
    private const int MaxSoftLimitSlices = 32;

    /// <summary>Slices an allocation may run under the memory limit before it fails (it stops earlier after
    /// <see cref="MaxFruitlessSlices"/> slices in a row that moved, released and left nothing): 128 ms at the default slice time. A failure under the memory limit is an
    /// out-of-memory error, so it waits longer than the soft limit's pass, as the .NET GC runs a full blocking
    /// collection before it throws. Several threads at the limit share the room each slice makes (one thread's slice
    /// empties a pageblock, another's allocation takes it), and on a loaded machine a slice on the wall clock may get
    /// little CPU: 32 slices were seen to run out with three threads at 1.5x their live bytes while a pageblock's
    /// worth of waste was still there to move.</summary>
    private const int MaxLimitSlices = 256;

    /// <summary>Slices in a row that found nothing to do an allocation under the memory limit runs before it fails,
    /// each after a millisecond's sleep (the kernel's compaction likewise retries a few times before an OOM). What
    /// stood in the way may be another thread's for a moment: a block pinned by a <c>PinScope</c>, or frozen or being
    /// freed, whose thread a loaded machine has taken off the CPU for a scheduler quantum; the sleep lets it run.
    /// Seen: three threads at 1.5x their live bytes failed after a slice that found two such pins, in about one run in
    /// five under a load average of 15-20 on two cores. A limit that truly cannot hold fails at most 16 ms later.</summary>
    private const int MaxFruitlessSlices = 16;

    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    /// <summary>True when the soft limit is on (a waste ratio is set).</summary>
    public bool SoftLimitOn => _s.SoftLimitRatio != 0;

    /// <summary>The memory limit in bytes, 0 for none.</summary>
    public long MemoryLimit => _s.MemoryLimit;

    /// <summary>True when a memory limit is set and committed memory with the charged metadata is within a pageblock
    /// (and its descriptors) of it, so a failed allocation failed for want of a commit the limit refused, not because
    /// the arena's range is full. A racy read of the charged bytes: a stale value misnames one failure's cause at
    /// worst (and <see cref="NextRoomAttempt"/> retries a refusal the limit no longer explains).</summary>
    public bool LimitInTheWay() =>
        _s.MemoryLimit != 0 && _memory.ChargedBytes > _s.MemoryLimit - _s.PageblockBytes - _memory.DescriptorBytesPerPageblock;

    /// <summary>True when committed memory is within a pageblock of the soft limit (the waste ratio's); racy like
    /// <see cref="LimitInTheWay"/>.</summary>
    private bool SoftLimitInTheWay() => _memory.CommittedBytes > _memory.SoftLimitBytes - _s.PageblockBytes;

    /// <summary>
    /// Decides whether an allocation that found no room tries again, doing first what may make room
    /// (native-layout.md, section 9, "The memory limit"): a soft limit set when live bytes were lower is raised to
    /// today's (and the allocation retries at once); a commit the memory limit or the soft limit refused runs slices
    /// of freeing and compacting, at most <see cref="MaxLimitSlices"/> (<see cref="MaxSoftLimitSlices"/> for the soft limit), and only while each makes progress (a slice
    /// that moved, released and left nothing ends the search; under the memory limit only after
    /// <see cref="MaxFruitlessSlices"/> such slices in a row, a millisecond apart). The memory limit is never passed; the soft limit gives
    /// way for this allocation's last try when the slices end (the caller set <see cref="ArenaMemory.SoftLimitApplies"/>
    /// and restores it). False when nothing is left to try. Caller is in a call section and holds no heap lock.
    /// </summary>
    public bool NextRoomAttempt(ref RoomSearch room)
    {
        if (RaiseSoftLimit(ref room)) return true;
        bool hard = LimitInTheWay(), soft = !hard && SoftLimitOn && !room.PassedSoftLimit && SoftLimitInTheWay();
        if (!hard && !soft)
        {
            // No limit stands in the way now, yet this thread's refusal may still have been a limit's, a moment ago:
            // another thread has since given memory back (its slice's decommits), or a background wake raised the
            // soft limit with live bytes. Retry, bounded like the slices. Otherwise the arena itself has no room, or
            // the OS refused the commit (not retried: the failure surfaces).
            if (!ArenaMemory.TakeLimitRefusal() || room.Slices >= MaxLimitSlices) return false;
            room.Slices++;
            return true;
        }
        // The soft limit's slices are compaction on the allocating thread: off with direct compaction (the memory
        // limit's are not: without them it could not be kept).
        int maxSlices = hard ? MaxLimitSlices : _s.DirectCompaction ? MaxSoftLimitSlices : 0;
        if (room.Slices < maxSlices)
        {
            if (MakeRoomUnderLimit())
            {
                room.Slices++;
                room.FruitlessSlices = 0;
                return true;
            }
            if (hard && ++room.FruitlessSlices <= MaxFruitlessSlices)
            {
                // A real sleep, not the heap's clock: it lets other threads run, it decides nothing by time.
                room.Slices++;
                Thread.Sleep(1);
                return true;
            }
        }
        if (!soft) return false;
        room.PassedSoftLimit = true;
        ArenaMemory.SoftLimitApplies = false;
        return true;
    }

    /// <summary>
    /// The first thing an allocation that found no room tries, once per search and before it drains any cache: a soft
    /// limit set when live bytes were lower is raised to today's. A heap that grows meets the soft limit at every few
    /// pageblocks it commits without any waste in it, and draining the thread caches there would only release the
    /// slabs they were filling (holes in the pageblocks behind the next-fit region). True when it was raised, so the
    /// allocation retries at once.
    /// </summary>
    public bool RaiseSoftLimit(ref RoomSearch room)
    {
        if (!SoftLimitOn || room.SoftLimitUpdated) return false;
        room.SoftLimitUpdated = true;
        return UpdateSoftLimit();
    }

    /// <summary>
    /// Sets the soft limit from the bytes live blocks occupy now (<see cref="LiveFootprint"/>: slots and run pages,
    /// so rounding, which no compaction removes, does not count as waste): the waste ratio's share above them
    /// (the soft limit's ratio times that, and at least WasteMinBytes above it), in whole pageblocks. True when that raised
    /// it. Reads the class and zone counters racily: a stale sum costs one refusal or one pageblock. Called by
    /// allocations and by every background wake.
    /// </summary>
    public bool UpdateSoftLimit()
    {
        long live = _footprint.Bytes(), pb = _s.PageblockBytes;
        long target = Math.Max((long)(live * _s.SoftLimitRatio), live + _s.WasteMinBytes);
        target = (target + pb - 1) / pb * pb;
        long old = _memory.SoftLimitBytes;
        _memory.SoftLimitBytes = target;
        return target > old;
    }

    /// <summary>
    /// One slice of the memory limit's work on an allocating thread whose allocation found no room under the limit:
    /// wholly free pageblocks (and kept empty slabs) are decommitted at once; when that gives nothing back, the
    /// compactor consolidates slabs and compacts the movable zone for at most a slice (on the heap's clock), and what
    /// that emptied is decommitted; when even that found nothing, storage other threads have parked in their caches
    /// since is drained back into its slabs. True when it moved, drained or gave back anything, or ran out of budget
    /// with work left (the allocation retries). Caller is in a call section (no cache section) and holds no heap lock. Counted and traced
    /// per slice.
    /// </summary>
    private bool MakeRoomUnderLimit()
    {
        TimeProvider clock = _s.Clock;
        long t0 = clock.GetTimestamp();
        long released = _reclaimer.ReleaseEmptiedPageblocks(), moved = 0;
        bool unfinished = false;   // the slice's budget ran out: there is more to do, the next slice resumes
        bool drained = false;      // the threads' caches were drained
        if (released == 0 && _compactor != null)
        {
            (moved, unfinished) = _compactor.LimitSlice(Math.Max(1, (long)(_s.SliceTime.TotalSeconds * clock.TimestampFrequency)));
            released = _reclaimer.ReleaseEmptiedPageblocks();
        }
        if (released == 0 && moved == 0 && !unfinished && _caches.CachedSlots() + _caches.CachedRuns() > 0)
        {
            // Nothing to move or give back, yet other threads' caches have parked free storage again since this
            // allocation drained them (they keep allocating and freeing beside it): slots bound in a cache are
            // allocated as far as compaction can tell. Drain them once more, so the next slice can move what is left
            // in those slabs, or the empty ones go back now.
            // Draining is progress: the storage is back in its slabs (bounded, like every slice, by the slices' cap).
            _caches.Drain();
            released = _reclaimer.ReleaseEmptiedPageblocks();   // empty slabs first, then whole free pageblocks
            drained = true;
        }
        TimeSpan elapsed = clock.GetElapsedTime(t0);
        Interlocked.Increment(ref _counters[CompactionCounter.LimitSlices]);
        Interlocked.Add(ref _counters[CompactionCounter.LimitBytesDecommitted], released);
        Interlocked.Add(ref _counters[CompactionCounter.LimitNanoseconds], elapsed.Ticks * 100);
        if (Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.MemoryLimit))
            Events.LimitSlice(_id, released, moved, elapsed.TotalMilliseconds);
        return released > 0 || moved > 0 || unfinished || drained;
    }

    /// <summary>An allocation the arena could not serve (the slow path's failure; rare, so it checks the listener).
    /// Under a memory limit that stood in the way it is also counted as a limit failure, with its reason.</summary>
    public void NoteAllocationFailed(long size, BlockKind kind)
    {
        if (Events.IsEnabled(EventLevel.Warning, NativeHeapEventSource.Keywords.Allocation)) Events.AllocationFailed(_id, size, kind.ToString());
        if (!LimitInTheWay()) return;
        Interlocked.Increment(ref _counters[CompactionCounter.LimitFailures]);
        if (Events.IsEnabled(EventLevel.Warning, NativeHeapEventSource.Keywords.MemoryLimit)) Events.LimitFailed(_id, size, _s.MemoryLimit, LimitFailureReason(size));
    }

    /// <summary>The <see cref="OutOfMemoryException"/> of a failed allocation, with the memory limit's reason when the
    /// limit stood in the way.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void ThrowOutOfMemory(long size, BlockKind kind)
    {
        if (LimitInTheWay())
            throw new OutOfMemoryException($"The heap cannot serve a {kind} block of {size} bytes under its memory limit: {LimitFailureReason(size)}.");
        ThrowHelper.OutOfMemory(size, kind);
    }

    /// <summary>Why the memory limit could not be kept for an allocation of <paramref name="size"/>: live bytes do
    /// not fit under it, or committed memory is held by pinned and unmovable blocks that compaction cannot move. For a
    /// failure's exception and event only (it walks the heap's entries to count pins).</summary>
    private string LimitFailureReason(long size)
    {
        long limit = _s.MemoryLimit;
        (long live, _) = _caches.LiveTotals();
        long metadata = _memory.ChargedBytes - _memory.CommittedBytes;
        if (live + size + metadata > limit)
            return $"the live bytes ({live:N0}), this block ({size:N0}) and the heap's metadata ({metadata:N0}) do not fit under the memory limit ({limit:N0} bytes)";
        (int slot, int atomic) = PinCensus.CountByKind(_handles);
        return $"the memory limit ({limit:N0} bytes) is held by memory compaction could not free: {_memory.CommittedBytes:N0} bytes " +
               $"committed for {live:N0} live, and {metadata:N0} of metadata; {slot + atomic} pin(s) ({Volatile.Read(ref _longTermPins.Held)} long-term) and every unmovable " +
               "block keep their pages in place";
    }
}
