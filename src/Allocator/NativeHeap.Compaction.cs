using System.Diagnostics.Tracing;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Engine;

namespace Compaction.Allocator;

// The compaction, reclaim and diagnostics entry points of the public API: explicit compaction, the background
// thread's controls (the thread itself is Engine/CompactionDaemon.cs) and its hand-driven step, the explicit release
// of free memory, and the statistics and maps (their walks are Diagnostics/HeapInspector.cs).
public sealed partial class NativeHeap
{
    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    /// <summary>True when a listener wants events of <paramref name="keywords"/> at <paramref name="level"/>: one
    /// load and a compare when nobody listens.</summary>
    private static bool Tracing(EventKeywords keywords, EventLevel level = EventLevel.Informational) => Events.IsEnabled(level, keywords);

    /// <summary>A snapshot of the heap's compaction and reclaim counters.</summary>
    private CompactionStatistics CountersNow() => _inspector.Counters();

    /// <summary>
    /// Compacts the whole movable zone now (like writing to /proc/sys/vm/compact_memory): size classes are
    /// consolidated, then movable runs and slabs move from the bottom of the zone to free space at the top, skipping
    /// pinned blocks. Blocks until done; other threads keep allocating, pinning and freeing meanwhile. Called from a
    /// movable owner's callback (inside a compaction), it does nothing.
    /// </summary>
    /// <remarks>Cost: proportional to what it moves, on the calling thread: about 5 GB/s for 64 KiB runs and
    /// 0.4 GB/s for small slab blocks here (each batch also pays one process-wide barrier); 85-400 ms were measured
    /// for 100-500 MiB live on the footprint workloads.</remarks>
    /// <returns>The counters of this run (the difference over the call).</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics Compact()
    {
        if (_disposed) ThrowHelper.Disposed();
        if (_compactor == null) return new CompactionStatistics();
        using CallSection _ = new(_caches);
        long[] before = _counters.Read();
        long t0 = _clock.GetTimestamp();
        bool traced = Tracing(NativeHeapEventSource.Keywords.Compaction);
        if (traced) Events.CompactionStart(_id, "explicit", "sync_full");
        _compactor.CompactAll();
        GC.KeepAlive(this);   // the run worked on native memory the finalizer would free
        long[] run = _counters.Since(before);
        if (traced) Events.Pass(_id, "explicit", "sync_full", run, _clock.GetElapsedTime(t0));
        return new CompactionStatistics(run);
    }

    /// <summary>
    /// Runs one wake of the background compactor by hand, with the time passed in: slab consolidation, a proactive
    /// pass if the fragmentation score is above the high watermark, and the decommit of pageblocks free for longer
    /// than <see cref="HeapOptions.DecommitDelay"/> (measured against <paramref name="now"/>, the heap's time: the
    /// background thread passes the time on <see cref="HeapOptions.TimeProvider"/> since the heap was created). Skipped
    /// while another compaction runs.
    /// </summary>
    /// <returns>The counters of this step.</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics RunCompactionStep(TimeSpan now)
    {
        if (_disposed) ThrowHelper.Disposed();
        using CallSection _ = new(_caches);
        CompactionStatistics before = CountersNow();
        _daemon.Step(now);
        GC.KeepAlive(this);   // the step worked on native memory the finalizer would free
        return CountersNow() - before;
    }

    /// <summary>Starts the background compactor thread (like kcompactd): it wakes every
    /// <see cref="HeapOptions.CompactionInterval"/> on <see cref="HeapOptions.TimeProvider"/>'s timers and runs
    /// <see cref="RunCompactionStep"/> with that clock's time. Does nothing if it runs. The thread holds the heap only
    /// weakly between wakes, so a heap dropped without <see cref="Dispose"/> is still finalized (and the thread ends).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void StartBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        _daemon.Start();
    }

    /// <summary>Stops the background compactor and waits for its current step to end. Does nothing if it is not
    /// running. Called on the background thread itself (from a movable owner's callback) it asks the thread to end
    /// after the current step and returns at once (Dispose still waits for that step).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (Dispose already stopped the thread).</exception>
    public void StopBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        _daemon.Stop();
    }

    /// <summary>True while the background compactor thread runs (false once the heap is disposed; never throws).</summary>
    public bool BackgroundCompactionRunning => _daemon.Running;

    /// <summary>Returns free memory to the OS so that resident memory falls: drains the per-thread caches, frees the
    /// empty slabs kept for reuse, decommits every wholly free pageblock (madvise DONTNEED on Linux), then purges
    /// free runs of at least 4 pages inside pageblocks still in use (madvise DONTNEED; they stay usable). A decommit or
    /// purge the OS refuses is counted (<see cref="HeapStatistics.DecommitFailures"/>) and leaves that memory committed;
    /// it raises no exception. Returns the bytes decommitted or purged.</summary>
    /// <remarks>Cost: one madvise system call per free pageblock or run, and a walk of the free lists: milliseconds
    /// for hundreds of MiB (61 ms for 144 MiB in the demo); pages purged fault back in (about 13 us per 4 KiB page
    /// here) when they are used again.</remarks>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long ReleaseFreeMemory()
    {
        if (_disposed) ThrowHelper.Disposed();
        using CallSection _ = new(_caches);
        long purged = _memory.PurgedBytes, decommitted = _memory.DecommittedBytes;
        long bytes = _reclaimer.ReleaseFreeMemory();
        GC.KeepAlive(this);   // the release worked on native memory the finalizer would free
        if (Tracing(NativeHeapEventSource.Keywords.Reclaim))
            Events.Released(_id, "explicit", _memory.DecommittedBytes - decommitted, _memory.PurgedBytes - purged);
        return bytes;
    }

    /// <summary>A snapshot of memory use, free lists per order and migrate type, and slab occupancy.</summary>
    /// <remarks>Cost: a walk of every zone's free lists and every size class under their locks, and a managed
    /// snapshot object: microseconds to a millisecond or so with a large arena; not for a hot path (the metrics take
    /// one per collection). Taken under the statistics lock, which Dispose takes before it frees anything, so a
    /// snapshot racing a Dispose (a metrics listener's collection may well) never reads freed metadata.</remarks>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapStatistics GetStatistics() => _inspector.Statistics();

    /// <summary>
    /// A map of the arena for <see cref="ArenaMap.Svg"/>: each pageblock below the zones' frontiers with its migrate
    /// type, commit state, occupancy and pinned pages. Each pageblock is read under its zone's lock; the walk does not
    /// stop the heap, so the map shows it as it was during the walk.
    /// </summary>
    /// <remarks>Cost: proportional to the arena in use (every page descriptor below the frontiers is read).</remarks>
    /// <param name="title">The caption of the picture.</param>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public ArenaMap GetArenaMap(string title = "arena") => _inspector.WalkArena(title);

    /// <summary>
    /// Page by page, <paramref name="count"/> pageblocks from <paramref name="firstPageblock"/> on (below the zones'
    /// frontiers), for <see cref="ArenaMap.PageSvg"/>: what each page holds, its occupancy and its pins. Read under
    /// each zone's lock, a pageblock at a time, like <see cref="GetArenaMap"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the arena.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public IReadOnlyList<PageView> GetPageMap(int firstPageblock, int count) => _inspector.WalkPages(firstPageblock, count);
}
