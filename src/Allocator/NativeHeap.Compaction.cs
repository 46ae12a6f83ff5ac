using System.Diagnostics;

namespace Compaction.Allocator;

// The compaction triggers of the public API: explicit, background (kcompactd), and the statistics.
public sealed partial class NativeHeap
{
    /// <summary>The compactor of the movable zone; null when the heap has no movable zone.</summary>
    internal readonly Compactor? Compactor;
    private Thread? _daemon;
    private ManualResetEventSlim? _daemonStop;
    private readonly Lock _daemonLock = new();

    /// <summary>
    /// Compacts the whole movable zone now (like writing to /proc/sys/vm/compact_memory): size classes are
    /// consolidated, then movable runs and slabs move from the bottom of the zone to free space at the top, skipping
    /// pinned blocks. Blocks until done; other threads keep allocating, pinning and freeing meanwhile.
    /// </summary>
    /// <returns>The counters of this run (the difference over the call).</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics Compact()
    {
        if (_disposed) ThrowHelper.Disposed();
        if (Compactor == null) return new CompactionStatistics();
        CompactionStatistics before = Compactor.Counters.Snapshot();
        Compactor.CompactAll();
        return Compactor.Counters.Snapshot() - before;
    }

    /// <summary>
    /// Runs one wake of the background compactor by hand, with the time passed in: slab consolidation, a proactive
    /// pass if the fragmentation score is above the high watermark, and the decommit of pageblocks free for longer
    /// than <see cref="HeapOptions.DecommitDelay"/> (measured against <paramref name="now"/>).
    /// </summary>
    /// <returns>The counters of this step.</returns>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public CompactionStatistics RunCompactionStep(TimeSpan now)
    {
        if (_disposed) ThrowHelper.Disposed();
        if (Compactor == null) return new CompactionStatistics();
        CompactionStatistics before = Compactor.Counters.Snapshot();
        Compactor.DaemonStep(now);
        return Compactor.Counters.Snapshot() - before;
    }

    /// <summary>Starts the background compactor thread (like kcompactd): it wakes every
    /// <see cref="HeapOptions.CompactionInterval"/> and runs <see cref="RunCompactionStep"/>. Does nothing if it runs.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void StartBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        if (Compactor == null) return;
        lock (_daemonLock)
        {
            if (_daemon != null) return;
            var stop = new ManualResetEventSlim();
            long origin = Stopwatch.GetTimestamp();
            var thread = new Thread(() =>
            {
                while (!stop.Wait(_options.CompactionInterval))
                    Compactor.DaemonStep(Stopwatch.GetElapsedTime(origin));
            })
            { IsBackground = true, Name = "NativeHeap compactor" };
            _daemonStop = stop;
            _daemon = thread;
            thread.Start();
        }
    }

    /// <summary>Stops the background compactor and waits for its current step to end. Does nothing if it is not running.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed (Dispose already stopped the thread).</exception>
    public void StopBackgroundCompaction()
    {
        if (_disposed) ThrowHelper.Disposed();
        StopDaemon();
    }

    private void StopDaemon()
    {
        lock (_daemonLock)
        {
            if (_daemon == null) return;
            _daemonStop!.Set();
            _daemon.Join();
            _daemonStop.Dispose();
            _daemon = null;
            _daemonStop = null;
        }
    }

    /// <summary>True while the background compactor thread runs.</summary>
    public bool BackgroundCompactionRunning => Volatile.Read(ref _daemon) != null;
}
