using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Reclaim;

namespace Compaction.Allocator.Engine;

/// <summary>What the background thread uses of the heap's options: its interval, its CPU share during a waste-driven
/// run, the clock whose timers wake it and whose time stamps free memory, the CPU clocks it is charged by
/// (<see cref="CompactionPacer"/>; null for the OS's), and whether it runs under the background scheduling policy
/// (<see cref="BackgroundScheduling"/>).</summary>
internal sealed record DaemonSettings(TimeSpan Interval, double CpuShare, TimeProvider Clock, CpuClock? Cpu = null, bool BatchScheduling = true)
{
    /// <summary>The CPU clocks the pacing reads: the given ones, or the OS's.</summary>
    public CpuClock CpuClocks => Cpu ?? CpuClock.System;
}

/// <summary>The parts of one heap a background wake works on (the heap builds them).</summary>
internal sealed record DaemonParts(
    long Id, ArenaMemory Memory, PageAllocator Pages, ThreadCaches Caches, Compactor? Compactor, Reclaimer Reclaimer,
    MemoryLimitKeeper Limit, CompactionCounters Counters, BackgroundFailures Failures);

/// <summary>
/// The background compactor of one heap (the kernel's kcompactd, with jemalloc's decay beside it): a thread that wakes
/// every interval, or sooner during a waste-driven run, and runs one step — the compactor's step, then the
/// reclaimer's delayed trim or its release after a waste slice. The step is also driven by hand
/// (<see cref="Step"/>, with the time passed in). Every wait is on the heap's <see cref="TimeProvider"/>: a timer of
/// the provider signals the thread, so a test's manual provider decides when it wakes and what time it is.
/// </summary>
/// <remarks>
/// <para>The thread holds the heap only weakly: it keeps a weak reference to this object and one to the heap's
/// <em>anchor</em> (the heap itself, as an object it never calls), and holds both strongly only for the length of a
/// wake, so a heap dropped without Dispose is finalized between wakes and its thread ends at the next one.</para>
/// <para>Lock ordering: <c>_lock</c> (this object's bookkeeping) is a leaf: never held while a thread works or is
/// joined, and never taken by a step.</para>
/// </remarks>
internal sealed class CompactionDaemon
{
    private readonly DaemonSettings _s;
    private readonly DaemonParts _p;
    private readonly WeakReference<object> _anchor;   // the heap: alive while a wake runs, never called
    private readonly long _origin;                    // the clock's timestamp at the heap's construction: time zero

    private Thread? _thread;                          // the running background thread, or null; _lock
    private DaemonWakeup? _wakeup;                    // its wake and stop signal; _lock
    // Every background thread started and not yet known to have ended, with its signal: a thread an owner callback
    // stopped (on that thread itself) is not joined by the stop, so Close joins it. _lock.
    private readonly List<(Thread thread, DaemonWakeup wakeup)> _threads = [];
    private bool _closed;                             // Close ran: no thread may start until Reopen; _lock
    private volatile bool _heapGone;                  // the heap was disposed or finalized: a wake ends its thread
    private readonly Lock _lock = new();

    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    public CompactionDaemon(DaemonSettings settings, DaemonParts parts, object anchor)
    {
        _s = settings;
        _p = parts;
        _anchor = new WeakReference<object>(anchor);
        _origin = settings.Clock.GetTimestamp();
    }

    /// <summary>The heap's time now: the clock's time since the heap was built (what stamps free memory).</summary>
    public TimeSpan Now => _s.Clock.GetElapsedTime(_origin);

    /// <summary>True while the background thread runs (a racy read of one reference: a thread that is stopping may
    /// still be seen for an instant).</summary>
    public bool Running => Volatile.Read(ref _thread) != null;

    // ------------------------------------------------------------------ one wake

    /// <summary>One wake: the compactor's step, then the delayed trim (only when the compactor ran: a wake skipped
    /// because another compaction runs, or from inside one, skips both). After a waste-driven slice, what it emptied
    /// goes back to the OS at once instead of the trim: wholly free pageblocks (and kept empty slabs) after every
    /// slice, and free runs inside used pageblocks purged when the run has ended. Traced when a listener wants it.
    /// Caller is in a call section (the API's hand-driven step) or is the background thread.</summary>
    public void Step(TimeSpan now)
    {
        if (!Events.IsEnabled())
        {
            StepCore(now);
            return;
        }
        // Traced: the wake's counters before and after, and what the OS got back.
        ArenaMemory memory = _p.Memory;
        long[] before = _p.Counters.Read();
        long purged = memory.PurgedBytes, decommitted = memory.DecommittedBytes, t0 = _s.Clock.GetTimestamp();
        StepCore(now);
        long[] d = _p.Counters.Since(before);
        string trigger = d[(int)CompactionCounter.WasteWakes] > 0 ? "waste"
            : d[(int)CompactionCounter.CompactDaemonMigrateScanned] > 0 ? "proactive"
            : d[(int)CompactionCounter.PagesCompacted] > 0 ? "consolidation" : "idle";
        if (Events.IsEnabled(EventLevel.Verbose, NativeHeapEventSource.Keywords.Background))
            Events.BackgroundWake(_p.Id, trigger, d[(int)CompactionCounter.BytesMoved], _s.Clock.GetElapsedTime(t0).TotalMilliseconds,
                                  (double)_p.Pages.ResidentBytesEstimate / Math.Max(1, _p.Caches.LiveTotals().bytes));
        if (Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.Compaction)) Events.Failures(_p.Id, d);
        long gaveBack = memory.DecommittedBytes - decommitted, purgedNow = memory.PurgedBytes - purged;
        if ((gaveBack | purgedNow) != 0 && Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.Reclaim))
            Events.Released(_p.Id, "background", gaveBack, purgedNow);
    }

    private void StepCore(TimeSpan now)
    {
        if (_p.Limit.SoftLimitOn) _p.Limit.UpdateSoftLimit();   // follows live bytes down as well as up
        Compactor? compactor = _p.Compactor;
        if (compactor == null)
        {
            _p.Reclaimer.Trim(now);   // reclaim runs whatever zones the heap has
            return;
        }
        BackgroundStepResult step = compactor.BackgroundStep();
        BackgroundStepOutcome outcome = step.Outcome;
        if (outcome == BackgroundStepOutcome.Skipped) return;
        if (step.ShareChange != 0 && Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.Background))
            Events.WasteShareChanged(_p.Id, step.ShareChange > 0, 100 * _s.CpuShare / step.ShareDivisor);
        if (outcome == BackgroundStepOutcome.WasteSlice)
        {
            // The slice's release replaces this wake's delayed trim (it decommits every wholly free pageblock now).
            _p.Reclaimer.ReleaseEmptiedPageblocks();
            if (!compactor.WasteRunActive) _p.Reclaimer.PurgeFreeRuns();
        }
        else
        {
            _p.Reclaimer.Trim(now);
        }
    }

    /// <summary>How long the background thread sleeps before its next wake: the interval, or during a waste-driven
    /// run or while the daemon's own pass is under way what keeps the process's CPU spent on compaction at the share:
    /// a wake charged c nanoseconds of CPU (its thread's, or the process's beyond the other threads' own rate, whichever
    /// is more; <see cref="CompactionPacer"/>) that took w of wall time sleeps c / share - w, at least 1 ms; during a
    /// waste-driven run the share is the configured one divided by the run's back-off (1 to 8).</summary>
    private TimeSpan NextWakeDelay(WakeCharge charge)
    {
        Compactor? compactor = _p.Compactor;
        if (compactor == null) return _s.Interval;
        if (compactor.WasteRunActive) return CompactionPacer.PacedDelay(charge, _s.CpuShare / compactor.WasteShareDivisor);
        return compactor.DaemonPassUnderWay ? CompactionPacer.PacedDelay(charge, _s.CpuShare) : _s.Interval;
    }

    // ------------------------------------------------------------------ the thread

    /// <summary>Starts the background thread. Does nothing if it runs. Takes <c>_lock</c>.</summary>
    /// <exception cref="ObjectDisposedException">A Dispose is stopping the threads (or stopped them).</exception>
    public void Start()
    {
        lock (_lock)
        {
            if (_closed) ThrowHelper.Disposed();
            if (_thread != null) return;
            _threads.RemoveAll(d => !d.thread.IsAlive);
            var wakeup = new DaemonWakeup(_s.Clock);
            var self = new WeakReference<CompactionDaemon>(this);
            WeakReference<object> anchor = _anchor;
            TimeSpan first = _s.Interval;
            var pacer = new CompactionPacer(_s.Clock, _s.CpuClocks);   // this thread's: its thread clock is its own
            bool batch = _s.BatchScheduling;
            var thread = new Thread(() =>
            {
                TimeSpan delay = first;
                if (batch) RecordBatchScheduling(self, BackgroundScheduling.ApplyToCurrentThread());   // a refusal leaves the default policy
                try
                {
                    pacer.MarkAsleep();
                    while (wakeup.Sleep(delay) && WakeOnce(self, anchor, pacer, out delay)) { }
                }
                finally
                {
                    wakeup.Dispose();
                }
            })
            { IsBackground = true, Name = "NativeHeap compactor" };
            _wakeup = wakeup;
            _thread = thread;
            _threads.Add((thread, wakeup));
            thread.Start();
        }
    }

    /// <summary>1 once the background thread runs under the background scheduling policy, -1 when the OS refused it,
    /// 0 before it tried (or when the option is off). Written once by the thread; read racily by tests.</summary>
    public int BatchScheduled => Volatile.Read(ref _batchScheduled);
    private int _batchScheduled;

    /// <summary>Records the scheduling policy's outcome. Not inlined, so that the thread's frame holds no strong
    /// reference to this object (see <see cref="WakeOnce"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void RecordBatchScheduling(WeakReference<CompactionDaemon> self, bool applied)
    {
        if (self.TryGetTarget(out CompactionDaemon? daemon)) Volatile.Write(ref daemon._batchScheduled, applied ? 1 : -1);
    }

    /// <summary>One wake of the background thread. Not inlined, so that the strong references it takes live only in
    /// this frame and the heap is unreachable (finalizable) between wakes; <see cref="GC.KeepAlive"/> holds the heap to
    /// the end of the step, since optimised code would otherwise let it die (and its finalizer free the arena) while
    /// the step still works on it. False when the heap is gone, or when the step threw: the exception is caught here
    /// (an exception escaping a thread would end the process), recorded and reported, and the thread ends.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static bool WakeOnce(WeakReference<CompactionDaemon> self, WeakReference<object> anchor, CompactionPacer pacer, out TimeSpan next)
    {
        next = default;
        if (!anchor.TryGetTarget(out object? heap) || !self.TryGetTarget(out CompactionDaemon? daemon) || daemon._heapGone) return false;
        try
        {
            pacer.WakeStarting();
            daemon.Step(daemon.Now);
            WakeCharge charge = pacer.WakeEnded();
            next = daemon.NextWakeDelay(charge);
            if (charge.Thread >= 0) Interlocked.Add(ref daemon._p.Counters[CompactionCounter.BackgroundCpuNanoseconds], charge.Thread);
            Interlocked.Add(ref daemon._p.Counters[CompactionCounter.BackgroundChargedCpuNanoseconds], charge.Charged);
        }
        catch (Exception ex)
        {
            daemon.Failed(ex);
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
    /// <see cref="Running"/> is false and <see cref="Start"/> starts a new one. Called on the failing thread, which
    /// ends right after. Takes <c>_lock</c>.</summary>
    private void Failed(Exception ex)
    {
        // The count and the thread's state first: they allocate nothing, so they hold even when what failed was a
        // managed allocation and the words below fail too.
        _p.Failures.Increment();
        lock (_lock)
        {
            if (_thread == Thread.CurrentThread)
            {
                _thread = null;
                _wakeup = null;
            }
        }
        try
        {
            _p.Failures.Record(ex);
            if (Events.IsEnabled(EventLevel.Error, NativeHeapEventSource.Keywords.Background))
                Events.BackgroundFailed(_p.Id, ex.GetType().FullName ?? ex.GetType().Name, ex.Message);
        }
        catch (Exception)
        {
            // An exception escaping the background thread would end the process; the failure is counted already.
        }
    }

    /// <summary>Stops the background thread and waits for its current step to end. Does nothing if it is not
    /// running. Called on the background thread itself (from a movable owner's callback) it asks the thread to end
    /// after the current step and returns at once (Close still waits for that step). Takes <c>_lock</c>, and joins
    /// outside it.</summary>
    public void Stop()
    {
        Thread? thread;
        lock (_lock)
        {
            if (_thread == null) return;
            thread = _thread;
            _wakeup!.Stop();
            _thread = null;
            _wakeup = null;
        }
        // Joined outside the lock: a step's owner callback may start or stop the thread meanwhile.
        if (thread != Thread.CurrentThread) thread.Join();
    }

    /// <summary>For Dispose: signals every background thread ever started to stop, and joins each (none is the
    /// calling thread: Dispose refuses from inside a compaction, and the thread runs nothing else). Afterwards no
    /// thread can start until <see cref="Reopen"/>. Returns whether one was running. Takes <c>_lock</c>, and joins
    /// outside it.</summary>
    public bool Close()
    {
        List<Thread> threads;
        bool running;
        lock (_lock)
        {
            _closed = true;
            running = _thread != null;
            _thread = null;
            _wakeup = null;
            foreach ((Thread _, DaemonWakeup wakeup) in _threads) wakeup.Stop();
            threads = _threads.ConvertAll(d => d.thread);
            _threads.Clear();
        }
        foreach (Thread t in threads)
            if (t != Thread.CurrentThread) t.Join();
        return running;
    }

    /// <summary>Undoes <see cref="Close"/> for a Dispose that was refused, restarting the thread if one ran.</summary>
    public void Reopen(bool wasRunning)
    {
        lock (_lock) _closed = false;
        if (wasRunning) Start();
    }

    /// <summary>The heap is gone (its Dispose succeeded, or its finalizer runs): a thread still waiting ends at its
    /// next wake. Lock-free (called from the finalizer): the flag is volatile, and the signal is only set.</summary>
    public void HeapGone()
    {
        _heapGone = true;
        Volatile.Read(ref _wakeup)?.Stop();
    }
}

/// <summary>
/// The background thread's sleep on the heap's <see cref="TimeProvider"/>. With the system clock it is the event's own
/// timed wait, as the thread slept before the provider existed (no timer callback through the thread pool, whose delays
/// under load changed how often the thread woke); with any other provider a timer of that provider signals the event
/// when the delay has passed on its clock, so a test's manual provider decides when the thread wakes. A stop sets the
/// same event. One per thread.
/// </summary>
internal sealed class DaemonWakeup : IDisposable
{
    private readonly ManualResetEventSlim _signal = new();   // never disposed: a late timer callback may still set it
    private readonly ITimer? _timer;                          // null for the system clock
    private volatile bool _stopped;

    public DaemonWakeup(TimeProvider clock)
    {
        if (clock != TimeProvider.System)
            _timer = clock.CreateTimer(static s => ((ManualResetEventSlim)s!).Set(), _signal, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Sleeps <paramref name="delay"/> on the clock; false when the thread is to stop instead. Called by the
    /// thread only. System clock: only a stop sets the event, which stays set. Other clocks: a stop that comes before
    /// the reset is seen by the check after it, and one that comes after it sets the event the wait is on, so no stop
    /// is lost; a timer callback sets the event only to end the wait it was armed for (a one-shot timer re-armed only
    /// after its wait ended).</summary>
    public bool Sleep(TimeSpan delay)
    {
        if (_timer == null) return !_signal.Wait(delay);
        _signal.Reset();
        if (_stopped) return false;
        _timer.Change(delay, Timeout.InfiniteTimeSpan);
        _signal.Wait();
        return !_stopped;
    }

    /// <summary>Asks the thread to stop: its current or next sleep returns false. Any thread; lock-free.</summary>
    public void Stop()
    {
        _stopped = true;
        _signal.Set();
    }

    /// <summary>Disposes the timer (the thread's last act).</summary>
    public void Dispose() => _timer?.Dispose();
}
