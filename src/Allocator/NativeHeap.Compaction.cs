using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Compaction.Allocator;

// The compaction and reclaim triggers of the public API: explicit compaction, the background thread (kcompactd)
// and its hand-driven step, and the explicit release of free memory.
public sealed partial class NativeHeap
{
    private Thread? _daemon;
    private ManualResetEventSlim? _daemonStop;
    private readonly Lock _daemonLock = new();   // guards starting and stopping the thread; never held while it works

    /// <summary>
    /// Compacts the whole movable zone now (like writing to /proc/sys/vm/compact_memory): size classes are
    /// consolidated, then movable runs and slabs move from the bottom of the zone to free space at the top, skipping
    /// pinned blocks. Blocks until done; other threads keep allocating, pinning and freeing meanwhile. Called from a
    /// movable owner's callback (inside a compaction), it does nothing.
    /// </summary>
    /// <returns>The counters of this run (the difference over the call).</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics Compact()
    {
        if (_disposed) ThrowHelper.Disposed();
        if (_compactor == null) return new CompactionStatistics();
        CompactionStatistics before = _compactor.Counters.Snapshot();
        _compactor.CompactAll();
        return _compactor.Counters.Snapshot() - before;
    }

    /// <summary>
    /// Runs one wake of the background compactor by hand, with the time passed in: slab consolidation, a proactive
    /// pass if the fragmentation score is above the high watermark, and the decommit of pageblocks free for longer
    /// than <see cref="HeapOptions.DecommitDelay"/> (measured against <paramref name="now"/>). Skipped while another
    /// compaction runs.
    /// </summary>
    /// <returns>The counters of this step.</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics RunCompactionStep(TimeSpan now)
    {
        if (_disposed) ThrowHelper.Disposed();
        if (_compactor == null) return new CompactionStatistics();
        CompactionStatistics before = _compactor.Counters.Snapshot();
        BackgroundStep(now);
        return _compactor.Counters.Snapshot() - before;
    }

    /// <summary>One wake: the compactor's step, then the delayed trim (only when the compactor ran: a wake skipped
    /// because another compaction runs, or from inside one, skips both).</summary>
    private void BackgroundStep(TimeSpan now)
    {
        if (_compactor == null || _compactor.BackgroundStep()) _reclaimer.Trim(now);
    }

    /// <summary>Starts the background compactor thread (like kcompactd): it wakes every
    /// <see cref="HeapOptions.CompactionInterval"/> and runs <see cref="RunCompactionStep"/>. Does nothing if it runs.
    /// The thread holds the heap only weakly between wakes, so a heap dropped without <see cref="Dispose"/> is still
    /// finalized (and the thread ends).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void StartBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        if (_compactor == null) return;
        lock (_daemonLock)
        {
            if (_daemon != null) return;
            var stop = new ManualResetEventSlim();
            var weak = new WeakReference<NativeHeap>(this);
            TimeSpan interval = _options.CompactionInterval;
            long origin = Stopwatch.GetTimestamp();
            var thread = new Thread(() =>
            {
                while (!stop.Wait(interval) && WakeOnce(weak, origin)) { }
            })
            { IsBackground = true, Name = "NativeHeap compactor" };
            _daemonStop = stop;
            _daemon = thread;
            thread.Start();
        }
    }

    /// <summary>One wake of the background thread. Not inlined, so that the strong reference it takes lives only in
    /// this frame and the heap is unreachable (finalizable) between wakes. False when the heap is gone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool WakeOnce(WeakReference<NativeHeap> weak, long origin)
    {
        if (!weak.TryGetTarget(out NativeHeap? heap) || heap._disposed) return false;
        heap.BackgroundStep(Stopwatch.GetElapsedTime(origin));
        return true;
    }

    /// <summary>Stops the background compactor and waits for its current step to end. Does nothing if it is not
    /// running. Called on the background thread itself (from a movable owner's callback) it asks the thread to end
    /// after the current step and returns at once.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (Dispose already stopped the thread).</exception>
    public void StopBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        StopDaemon();
    }

    /// <summary>Takes the daemon lock; joins the thread unless it is the calling thread (which would wait for itself).</summary>
    private void StopDaemon()
    {
        Thread? thread;
        ManualResetEventSlim? stop;
        lock (_daemonLock)
        {
            if (_daemon == null) return;
            thread = _daemon;
            stop = _daemonStop!;
            _daemon = null;
            _daemonStop = null;
            stop.Set();
        }
        // Joined outside the lock: a step's owner callback may start or stop the thread meanwhile.
        if (thread != Thread.CurrentThread) thread.Join();
    }

    /// <summary>True while the background compactor thread runs.</summary>
    public bool BackgroundCompactionRunning => Volatile.Read(ref _daemon) != null;

    /// <summary>Returns free memory to the OS so that resident memory falls: drains the per-thread caches, frees the
    /// empty slabs kept for reuse, decommits every wholly free pageblock (madvise DONTNEED on Linux), then purges
    /// free runs of at least 4 pages inside pageblocks still in use (madvise DONTNEED; they stay usable). A decommit or
    /// purge the OS refuses is counted (<see cref="HeapStatistics.DecommitFailures"/>) and leaves that memory committed;
    /// it raises no exception. Returns the bytes decommitted or purged.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long ReleaseFreeMemory()
    {
        if (_disposed) ThrowHelper.Disposed();
        return _reclaimer.ReleaseFreeMemory();
    }
}
