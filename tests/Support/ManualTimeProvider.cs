namespace Compaction.Tests;

/// <summary>
/// A <see cref="TimeProvider"/> whose time moves only when a test says so (<see cref="Advance"/>): its timestamps
/// are <see cref="TimeSpan"/> ticks from zero, and its timers fire, on the advancing thread and in due order, when an
/// advance passes their due time. <see cref="Arms"/> counts every arming of a timer (a creation or a change with a
/// finite due time), so a test can wait until a thread it drives has gone back to sleep.
/// </summary>
public sealed class ManualTimeProvider : TimeProvider
{
    private static readonly DateTimeOffset Epoch = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    private readonly Lock _lock = new();
    private readonly List<ManualTimer> _timers = [];   // _lock
    private long _now;                                  // ticks; written under _lock, read racily (64-bit, never torn)
    private int _arms;

    /// <summary>Timers armed so far (creations and changes with a finite due time).</summary>
    public int Arms => Volatile.Read(ref _arms);

    /// <summary>The provider's time since its zero.</summary>
    public TimeSpan Now => TimeSpan.FromTicks(Volatile.Read(ref _now));

    /// <inheritdoc/>
    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <inheritdoc/>
    public override long GetTimestamp() => Volatile.Read(ref _now);

    /// <inheritdoc/>
    public override DateTimeOffset GetUtcNow() => Epoch + Now;

    /// <inheritdoc/>
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new ManualTimer(this, callback, state);
        lock (_lock) _timers.Add(timer);
        timer.Change(dueTime, period);
        return timer;
    }

    /// <summary>Moves time on by <paramref name="by"/>, firing every timer that falls due on the way (a periodic one as
    /// often as its period fits), each at its due time, outside the provider's lock.</summary>
    public void Advance(TimeSpan by)
    {
        long end;
        lock (_lock) end = _now + by.Ticks;
        while (true)
        {
            ManualTimer? next = null;
            lock (_lock)
            {
                foreach (ManualTimer t in _timers)
                    if (t.Due is long due && due <= end && (next == null || due < next.Due!.Value)) next = t;
                if (next == null)
                {
                    Volatile.Write(ref _now, end);
                    return;
                }
                Volatile.Write(ref _now, Math.Max(_now, next.Due!.Value));
                next.Due = next.Period is long period ? next.Due + Math.Max(1, period) : null;
            }
            next.Fire();
        }
    }

    private void Arm(ManualTimer timer, TimeSpan dueTime, TimeSpan period)
    {
        lock (_lock)
        {
            timer.Due = dueTime == Timeout.InfiniteTimeSpan ? null : _now + Math.Max(0, dueTime.Ticks);
            timer.Period = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? null : period.Ticks;
        }
        if (dueTime != Timeout.InfiniteTimeSpan) Interlocked.Increment(ref _arms);
    }

    private void Remove(ManualTimer timer)
    {
        lock (_lock) _timers.Remove(timer);
    }

    private sealed class ManualTimer(ManualTimeProvider owner, TimerCallback callback, object? state) : ITimer
    {
        public long? Due;      // owner's _lock
        public long? Period;   // owner's _lock

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            owner.Arm(this, dueTime, period);
            return true;
        }

        public void Fire() => callback(state);

        public void Dispose() => owner.Remove(this);

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
