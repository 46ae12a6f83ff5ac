using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;

namespace Compaction.Bench.Micro.Threading;

/// <summary>
/// One piece of multi-threaded work: <see cref="ThreadTeam.Run"/> calls <see cref="Run"/> once on every participant
/// at the same moment and returns when all have returned.
/// </summary>
public abstract class ThreadWork
{
    /// <summary>Set-up done by each participant on its own thread before the first run (e.g. filling its slots, so
    /// that thread-caching allocators see the blocks as that thread's).</summary>
    public virtual void Prepare(ThreadTeam team, int participant) { }

    /// <summary>One invoke's share of participant <paramref name="participant"/> (0 is the calling thread).</summary>
    public abstract void Run(ThreadTeam team, int participant);

    /// <summary>Frees every block the work still holds (called once, on one thread, after the last run).</summary>
    public virtual void Release() { }
}

/// <summary>
/// A fixed team of threads that run a <see cref="ThreadWork"/> together, invoke after invoke, without creating a
/// thread per invoke: participant 0 is the calling (benchmark) thread, participants 1..n-1 are worker threads
/// created once. On 2 cores this keeps the team at one thread per core: the caller works instead of waiting.
/// </summary>
/// <remarks>
/// <para>Hand-off: <see cref="Run"/> bumps each worker's generation and sets its event; a worker that finished a run
/// spins (yielding) for up to <see cref="SpinBeforeParking"/> waiting for the next generation, so the back-to-back
/// invokes of an iteration wake it without a futex, and parks on its event after that (between iterations). All
/// participants then meet at a start barrier, so they begin the work together.</para>
/// <para>A participant that throws marks the team faulted: every wait of the others (barriers, rings) then throws
/// too instead of waiting forever, and <see cref="Run"/> rethrows the first exception.</para>
/// <para>Allocation: none per run (the events allocate their wait object once, on the first park).</para>
/// </remarks>
public sealed class ThreadTeam : IDisposable
{
    /// <summary>How long a worker spins for the next run before it parks on its event.</summary>
    public static readonly TimeSpan SpinBeforeParking = TimeSpan.FromMilliseconds(1);

    private readonly Worker[] _workers;
    private readonly SpinBarrier _start;
    private ThreadWork? _work;           // written by the caller before the workers are released, read by them after
    private bool _preparing;             // likewise: Prepare instead of Run
    private int _running;                // workers not yet done with the current run
    private ExceptionDispatchInfo? _failure;
    private volatile bool _faulted;
    private volatile bool _stopping;

    /// <summary>A team of <paramref name="participants"/> threads: the caller and participants - 1 workers.</summary>
    public ThreadTeam(int participants)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(participants, 1);
        Participants = participants;
        _start = new SpinBarrier(participants);
        _workers = new Worker[participants - 1];
        for (int i = 0; i < _workers.Length; i++) _workers[i] = new Worker(this, i + 1);
    }

    public int Participants { get; }

    /// <summary>True once a participant of the current run threw: the others stop waiting.</summary>
    public bool Faulted => _faulted;

    /// <summary>Runs <see cref="ThreadWork.Run"/> on every participant together; returns when all are done.</summary>
    public void Run(ThreadWork work) => Dispatch(work, preparing: false);

    /// <summary>Runs <see cref="ThreadWork.Prepare"/> on every participant together.</summary>
    public void Prepare(ThreadWork work) => Dispatch(work, preparing: true);

    /// <summary>One step of a wait loop of the work (ring full or empty, barrier not reached): spins, then yields,
    /// never sleeps; throws when another participant failed.</summary>
    public void SpinOnce(ref SpinWait spin)
    {
        if (_faulted) throw new OperationCanceledException("another participant of the thread team failed");
        spin.SpinOnce(sleep1Threshold: -1);
    }

    private void Dispatch(ThreadWork work, bool preparing)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        _work = work;
        _preparing = preparing;
        _faulted = false;
        Volatile.Write(ref _running, _workers.Length);
        foreach (Worker w in _workers) w.Release();
        Execute(0);
        // The workers finish at about the same time as the caller (same share of work, other core).
        var spin = new SpinWait();
        while (Volatile.Read(ref _running) != 0) spin.SpinOnce(sleep1Threshold: -1);
        ExceptionDispatchInfo? failure = Interlocked.Exchange(ref _failure, null);
        failure?.Throw();
    }

    private void Execute(int participant)
    {
        try
        {
            _start.SignalAndWait(this);
            if (_preparing) _work!.Prepare(this, participant);
            else _work!.Run(this, participant);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(e), null);
            _faulted = true;
        }
    }

    /// <summary>Stops and joins the workers. The team must not be running.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        foreach (Worker w in _workers) w.Release();
        foreach (Worker w in _workers) w.Dispose();
    }

    /// <summary>A worker thread and its wake-up event.</summary>
    private sealed class Worker : IDisposable
    {
        private readonly ThreadTeam _team;
        private readonly int _participant;
        private readonly Thread _thread;
        private readonly ManualResetEventSlim _wake = new(initialState: false);
        private int _generation;     // runs released so far; bumped by the caller

        public Worker(ThreadTeam team, int participant)
        {
            _team = team;
            _participant = participant;
            _thread = new Thread(Loop) { IsBackground = true, Name = $"bench-team-{participant}" };
            _thread.Start();
        }

        /// <summary>Caller: lets the worker start the next run (or stop). The increment is a full fence, so a worker
        /// that reads the old generation after its Reset is sure to be woken by this Set.</summary>
        public void Release()
        {
            Interlocked.Increment(ref _generation);
            _wake.Set();
        }

        /// <summary>Joins the thread (released with the team stopping), then disposes its event.</summary>
        public void Dispose()
        {
            _thread.Join();
            _wake.Dispose();
        }

        private void Loop()
        {
            for (int seen = 0; ; seen++)
            {
                WaitForGeneration(seen + 1);
                if (_team._stopping) return;
                _team.Execute(_participant);
                Interlocked.Decrement(ref _team._running);
            }
        }

        private void WaitForGeneration(int generation)
        {
            long deadline = Stopwatch.GetTimestamp() + (long)(SpinBeforeParking.TotalSeconds * Stopwatch.Frequency);
            var spin = new SpinWait();
            while (Volatile.Read(ref _generation) < generation)
            {
                if (Stopwatch.GetTimestamp() < deadline)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                    continue;
                }
                // Park: Reset (an interlocked update), then look again; a Release after the look sets the event.
                _wake.Reset();
                if (Volatile.Read(ref _generation) < generation) _wake.Wait();
            }
        }
    }
}

/// <summary>
/// A sense-reversing spin barrier for a few threads on as many cores: the last to arrive opens the next phase.
/// Waits yield (never sleep) and give up when the team faulted.
/// </summary>
public sealed class SpinBarrier(int participants)
{
    private readonly int _participants = participants;
    private int _remaining = participants;
    private volatile int _phase;

    public void SignalAndWait(ThreadTeam team)
    {
        // The phase cannot move before this thread arrives, so reading it first is safe.
        int phase = _phase;
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            _remaining = _participants;   // published by the volatile write below
            _phase = phase + 1;
            return;
        }
        var spin = new SpinWait();
        while (_phase == phase) team.SpinOnce(ref spin);
    }
}

/// <summary>
/// A bounded single-producer single-consumer ring of longs: a fixed array, a head written only by the consumer and a
/// tail written only by the producer, each on its own cache line with the other side's index cached beside it. No
/// lock and no allocation; Push waits while the ring is full, Pop while it is empty.
/// </summary>
/// <remarks>Invariant: <c>0 &lt;= tail - head &lt;= capacity</c>; slot <c>i &amp; mask</c> holds item i for
/// <c>head &lt;= i &lt; tail</c>. The producer's volatile write of tail publishes the slot written before it; the
/// consumer's volatile write of head hands the slot back.</remarks>
public sealed class SpscRing
{
    private readonly long[] _slots;
    private readonly long _mask;
    private ProducerSide _producer;
    private ConsumerSide _consumer;

    /// <param name="capacity">A power of two.</param>
    public SpscRing(int capacity)
    {
        if (capacity < 1 || (capacity & (capacity - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(capacity), "a power of two");
        _slots = new long[capacity];
        _mask = capacity - 1;
    }

    public int Capacity => _slots.Length;

    /// <summary>Producer only: appends <paramref name="item"/>, waiting while the ring is full.</summary>
    public void Push(long item, ThreadTeam team)
    {
        long tail = _producer.Tail;
        if (tail - _producer.CachedHead >= _slots.Length) WaitForRoom(tail, team);
        _slots[tail & _mask] = item;
        Volatile.Write(ref _producer.Tail, tail + 1);
    }

    /// <summary>Producer only: appends <paramref name="item"/> unless the ring is full (then returns false).</summary>
    public bool TryPush(long item)
    {
        long tail = _producer.Tail;
        if (tail - (_producer.CachedHead = Volatile.Read(ref _consumer.Head)) >= _slots.Length) return false;
        _slots[tail & _mask] = item;
        Volatile.Write(ref _producer.Tail, tail + 1);
        return true;
    }

    /// <summary>Consumer only: takes the oldest item, waiting while the ring is empty.</summary>
    public long Pop(ThreadTeam team)
    {
        long head = _consumer.Head;
        if (head == _consumer.CachedTail) WaitForItem(head, team);
        long item = _slots[head & _mask];
        Volatile.Write(ref _consumer.Head, head + 1);
        return item;
    }

    private void WaitForRoom(long tail, ThreadTeam team)
    {
        var spin = new SpinWait();
        while (tail - (_producer.CachedHead = Volatile.Read(ref _consumer.Head)) >= _slots.Length) team.SpinOnce(ref spin);
    }

    private void WaitForItem(long head, ThreadTeam team)
    {
        var spin = new SpinWait();
        while (head == (_consumer.CachedTail = Volatile.Read(ref _producer.Tail))) team.SpinOnce(ref spin);
    }

    /// <summary>The producer's line: its index and its last look at the consumer's (64 B of padding either side).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 192)]
    private struct ProducerSide
    {
        [FieldOffset(64)] public long Tail;
        [FieldOffset(72)] public long CachedHead;
    }

    /// <summary>The consumer's line: its index and its last look at the producer's.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 192)]
    private struct ConsumerSide
    {
        [FieldOffset(64)] public long Head;
        [FieldOffset(72)] public long CachedTail;
    }
}
