using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Os;

namespace Compaction.Allocator;

// The compaction and reclaim triggers of the public API: explicit compaction, the background thread (kcompactd)
// and its hand-driven step, and the explicit release of free memory.
public sealed partial class NativeHeap
{
    private Thread? _daemon;                       // the running background thread, or null
    private ManualResetEventSlim? _daemonStop;     // its stop signal
    // Every background thread started and not yet known to have ended, with its stop signal: a thread an owner
    // callback stopped (on that thread itself) is not joined by the stop, so Dispose joins it.
    private readonly List<(Thread thread, ManualResetEventSlim stop)> _daemons = [];
    private bool _daemonsClosed;                   // Dispose is stopping them: no thread may start
    private readonly Lock _daemonLock = new();     // guards the fields above; never held while a thread works or is joined
    private long _backgroundFailures;              // exceptions that ended a background thread
    private string? _lastBackgroundFailure;        // the last one, "type: message"

    /// <summary>A snapshot of the heap's compaction and reclaim counters.</summary>
    private CompactionStatistics CountersNow() => new(_counters.Read());

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
        using Section _ = new(_caches);
        CompactionStatistics before = CountersNow();
        long t0 = Stopwatch.GetTimestamp();
        bool traced = Tracing(NativeHeapEventSource.Keywords.Compaction);
        if (traced) Events.CompactionStart(_id, "explicit", "sync_full");
        _compactor.CompactAll();
        GC.KeepAlive(this);   // the run worked on native memory the finalizer would free
        CompactionStatistics run = CountersNow() - before;
        if (traced) Events.Pass(_id, "explicit", "sync_full", run, t0);
        return run;
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
        using Section _ = new(_caches);
        CompactionStatistics before = CountersNow();
        BackgroundStep(now);
        return CountersNow() - before;
    }

    /// <summary>One wake: the compactor's step, then the delayed trim (only when the compactor ran: a wake skipped
    /// because another compaction runs, or from inside one, skips both). After a waste-driven slice, what it emptied
    /// goes back to the OS at once instead of the trim: wholly free pageblocks (and kept empty slabs) after every
    /// slice, and free runs inside used pageblocks purged when the run has ended.</summary>
    private void BackgroundStep(TimeSpan now)
    {
        if (!Events.IsEnabled())
        {
            BackgroundStepCore(now);
            return;
        }
        // Traced: the wake's counters before and after, and what the OS got back.
        CompactionStatistics before = CountersNow();
        long purged = _memory.PurgedBytes, decommitted = _memory.DecommittedBytes, t0 = Stopwatch.GetTimestamp();
        BackgroundStepCore(now);
        CompactionStatistics d = CountersNow() - before;
        string trigger = d.WasteWakes > 0 ? "waste" : d.CompactDaemonMigrateScanned > 0 ? "proactive" : d.PagesCompacted > 0 ? "consolidation" : "idle";
        if (Tracing(NativeHeapEventSource.Keywords.Background, EventLevel.Verbose))
            Events.BackgroundWake(_id, trigger, d.BytesMoved, Stopwatch.GetElapsedTime(t0).TotalMilliseconds,
                                  (double)_pages.ResidentBytesEstimate / Math.Max(1, _caches.LiveTotals().bytes));
        if (Tracing(NativeHeapEventSource.Keywords.Compaction)) Events.Failures(_id, d);
        long gaveBack = _memory.DecommittedBytes - decommitted, purgedNow = _memory.PurgedBytes - purged;
        if ((gaveBack | purgedNow) != 0 && Tracing(NativeHeapEventSource.Keywords.Reclaim)) Events.Released(_id, "background", gaveBack, purgedNow);
    }

    private void BackgroundStepCore(TimeSpan now)
    {
        if (_softLimitRatio != 0) UpdateSoftLimit();   // follows live bytes down as well as up
        if (_compactor == null)
        {
            _reclaimer.Trim(now);
            GC.KeepAlive(this);
            return;
        }
        BackgroundStepResult step = _compactor.BackgroundStep();
        BackgroundStepOutcome outcome = step.Outcome;
        if (outcome == BackgroundStepOutcome.Skipped) return;
        if (step.ShareChange != 0 && Tracing(NativeHeapEventSource.Keywords.Background))
            Events.WasteShareChanged(_id, step.ShareChange > 0, 100 * _options.CompactionCpuShare / step.ShareDivisor);
        if (outcome == BackgroundStepOutcome.WasteSlice)
        {
            // The slice's release replaces this wake's delayed trim (it decommits every wholly free pageblock now).
            _reclaimer.ReleaseEmptiedPageblocks();
            if (!_compactor.WasteRunActive) _reclaimer.PurgeFreeRuns();
        }
        else
        {
            _reclaimer.Trim(now);
        }
        GC.KeepAlive(this);   // the step works on native memory the finalizer would free
    }

    /// <summary>How long the background thread sleeps before its next wake: the interval, or during a waste-driven
    /// run what keeps the thread at its CPU share: a wake that took t (the slice and the release after it) at share c
    /// sleeps t * (1 / c - 1), at least 1 ms; c is CompactionCpuShare divided by the run's back-off (1 to 8).</summary>
    private TimeSpan NextWakeDelay(TimeSpan took)
    {
        if (_compactor == null || !_compactor.WasteRunActive) return _options.CompactionInterval;
        double share = _options.CompactionCpuShare / _compactor.WasteShareDivisor;   // lowered after cycles that gave back little
        return TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, (long)(took.Ticks * (1 / share - 1))));
    }

    /// <summary>Starts the background compactor thread (like kcompactd): it wakes every
    /// <see cref="HeapOptions.CompactionInterval"/> and runs <see cref="RunCompactionStep"/>. Does nothing if it runs.
    /// The thread holds the heap only weakly between wakes, so a heap dropped without <see cref="Dispose"/> is still
    /// finalized (and the thread ends).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void StartBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        lock (_daemonLock)
        {
            if (_daemonsClosed) ThrowHelper.Disposed();
            if (_daemon != null) return;
            _daemons.RemoveAll(d => !d.thread.IsAlive);
            var stop = new ManualResetEventSlim();
            var weak = new WeakReference<NativeHeap>(this);
            TimeSpan first = _options.CompactionInterval;
            long origin = Stopwatch.GetTimestamp();
            var thread = new Thread(() =>
            {
                TimeSpan delay = first;
                while (!stop.Wait(delay) && WakeOnce(weak, origin, out delay)) { }
            })
            { IsBackground = true, Name = "NativeHeap compactor" };
            _daemonStop = stop;
            _daemon = thread;
            _daemons.Add((thread, stop));
            thread.Start();
        }
    }

    /// <summary>One wake of the background thread. Not inlined, so that the strong reference it takes lives only in
    /// this frame and the heap is unreachable (finalizable) between wakes; <see cref="GC.KeepAlive"/> holds it to the
    /// end of the step, since optimised code would otherwise let the heap die (and its finalizer free the arena) while
    /// the step still works on it. False when the heap is gone, or when the step threw: the exception is caught here
    /// (an exception escaping a thread would end the process), recorded and reported, and the thread ends.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool WakeOnce(WeakReference<NativeHeap> weak, long origin, out TimeSpan next)
    {
        next = default;
        if (!weak.TryGetTarget(out NativeHeap? heap) || heap._disposed) return false;
        try
        {
            long start = Stopwatch.GetTimestamp(), cpu = ThreadCpuClock.Nanoseconds();
            heap.BackgroundStep(Stopwatch.GetElapsedTime(origin));
            next = heap.NextWakeDelay(Stopwatch.GetElapsedTime(start));
            if (cpu >= 0)
                Interlocked.Add(ref heap._counters[CompactionCounter.BackgroundCpuNanoseconds], Math.Max(0, ThreadCpuClock.Nanoseconds() - cpu));
        }
        catch (Exception ex)
        {
            heap.BackgroundThreadFailed(ex);
            return false;
        }
        finally
        {
            GC.KeepAlive(heap);
        }
        return true;
    }

    /// <summary>The background thread's step threw <paramref name="ex"/>. The heap is consistent: every lock of the
    /// step was released, every frozen entry unfrozen and every isolated page given back by the finally blocks on the
    /// way out (native-layout.md, section 9, "An exception inside a pass"). Counts and records it, raises
    /// BackgroundFailed, and marks the thread stopped (unless a stop or a restart already replaced it) so that
    /// <see cref="BackgroundCompactionRunning"/> is false and <see cref="StartBackgroundCompaction"/> starts a new one.
    /// Called on the failing thread, which ends right after.</summary>
    private void BackgroundThreadFailed(Exception ex)
    {
        // The count and the thread's state first: they allocate nothing, so they hold even when what failed was a
        // managed allocation and the words below fail too.
        Interlocked.Increment(ref _backgroundFailures);
        lock (_daemonLock)
        {
            if (_daemon == Thread.CurrentThread)
            {
                _daemon = null;
                _daemonStop = null;
            }
        }
        try
        {
            Volatile.Write(ref _lastBackgroundFailure, $"{ex.GetType().FullName}: {ex.Message}");
            if (Tracing(NativeHeapEventSource.Keywords.Background, EventLevel.Error))
                Events.BackgroundFailed(_id, ex.GetType().FullName ?? ex.GetType().Name, ex.Message);
        }
        catch (Exception)
        {
            // An exception escaping the background thread would end the process; the failure is counted already.
        }
    }

    /// <summary>Stops the background compactor and waits for its current step to end. Does nothing if it is not
    /// running. Called on the background thread itself (from a movable owner's callback) it asks the thread to end
    /// after the current step and returns at once (Dispose still waits for that step).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (Dispose already stopped the thread).</exception>
    public void StopBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        Thread? thread;
        lock (_daemonLock)
        {
            if (_daemon == null) return;
            thread = _daemon;
            _daemonStop!.Set();
            _daemon = null;
            _daemonStop = null;
        }
        // Joined outside the lock: a step's owner callback may start or stop the thread meanwhile.
        if (thread != Thread.CurrentThread) thread.Join();
    }

    /// <summary>For Dispose: signals every background thread ever started to stop, and joins each (none is the
    /// calling thread: Dispose refuses from inside a compaction, and the thread runs nothing else). Afterwards no
    /// thread can start until <see cref="ReopenDaemons"/>. Returns whether one was running.</summary>
    private bool CloseDaemons()
    {
        List<Thread> threads;
        bool running;
        lock (_daemonLock)
        {
            _daemonsClosed = true;
            running = _daemon != null;
            _daemon = null;
            _daemonStop = null;
            foreach ((Thread _, ManualResetEventSlim stop) in _daemons) stop.Set();
            threads = _daemons.ConvertAll(d => d.thread);
            _daemons.Clear();
        }
        foreach (Thread t in threads)
            if (t != Thread.CurrentThread) t.Join();
        return running;
    }

    /// <summary>Undoes <see cref="CloseDaemons"/> for a Dispose that was refused, restarting the thread if one ran.</summary>
    private void ReopenDaemons(bool wasRunning)
    {
        lock (_daemonLock) _daemonsClosed = false;
        if (wasRunning) StartBackgroundCompaction();
    }

    /// <summary>True while the background compactor thread runs (false once the heap is disposed; never throws).</summary>
    public bool BackgroundCompactionRunning => Volatile.Read(ref _daemon) != null;

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
        using Section _ = new(_caches);
        long purged = _memory.PurgedBytes, decommitted = _memory.DecommittedBytes;
        long bytes = _reclaimer.ReleaseFreeMemory();
        GC.KeepAlive(this);   // the release worked on native memory the finalizer would free
        if (Tracing(NativeHeapEventSource.Keywords.Reclaim))
            Events.Released(_id, "explicit", _memory.DecommittedBytes - decommitted, _memory.PurgedBytes - purged);
        return bytes;
    }
}
