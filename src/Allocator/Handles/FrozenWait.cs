using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Handles;

/// <summary>
/// How a thread waits for a frozen entry to thaw (a migration copying the block, or a Dispose deciding): it spins and
/// yields for a few turns, which covers the copy of a small block, then sleeps on a process-wide gate that every
/// unfreeze pulses when someone sleeps there (<see cref="WakeSleepers"/>), so the wait ends when the copy does. A
/// bare <see cref="SpinWait"/> sleeps a whole millisecond at a time once it has spun a while, and a mutator that met
/// a block of a batch being copied waited 1.1 ms where the batch had finished long before.
/// </summary>
/// <remarks>
/// No lost wake-up (Dekker's pattern): a sleeper raises <see cref="s_sleepers"/> and then issues a full fence before it
/// loads the state word under the gate's lock (an interlocked add alone is not a full fence on every ARM64 build: with
/// LSE atomics and RCPC loads, a later acquire load may pass it); an unfreezer stores the state word, then a full
/// fence, then loads the count, and pulses under the same lock. Either the sleeper sees the entry thawed and does not sleep, or the unfreezer sees the
/// sleeper and pulses after the sleeper's check: it cannot take the lock between the check and the wait, because
/// <see cref="Monitor.Wait(object, int)"/> releases the lock as it starts waiting. A sleep is also bounded by
/// <see cref="SleepLimitMs"/>, so a thaw that pulses nobody (a Dispose that closes the heap) is seen within it. The
/// gate is a leaf lock: nothing is taken under it. The count is bounded by the number of threads, so it cannot wrap.
/// </remarks>
internal unsafe struct FrozenWait
{
    /// <summary>Turns of spinning and yielding before a waiter sleeps on the gate.</summary>
    private const int SpinTurns = 12;
    /// <summary>The longest one sleep on the gate lasts before the waiter looks again.</summary>
    private const int SleepLimitMs = 2;

    private static readonly object Gate = new();
    private static int s_sleepers;
    private SpinWait _spin;

    /// <summary>Threads sleeping on the gate now (racy read: for tests and diagnostics).</summary>
    public static int Sleepers => Volatile.Read(ref s_sleepers);

    /// <summary>A plain read of the sleeper count, for an unfreezer's cheap check after each block: it may miss a
    /// sleeper that has just arrived, so a batch still ends with <see cref="WakeSleepers"/>.</summary>
    public static bool AnySleepers => Volatile.Read(ref s_sleepers) != 0;

    /// <summary>One turn of waiting for <paramref name="e"/> to thaw; the caller reads the state word again after it.
    /// Returns at once when the entry is not frozen.</summary>
    public void Once(HandleEntry* e)
    {
        if (_spin.Count < SpinTurns)
        {
            _spin.SpinOnce(sleep1Threshold: -1);
            return;
        }
        Interlocked.Increment(ref s_sleepers);
        try
        {
            Interlocked.MemoryBarrier();   // the count's store before the state word's load (see the remarks)
            lock (Gate)
            {
                if ((Volatile.Read(ref e->State) & EntryState.Frozen) != 0) Monitor.Wait(Gate, SleepLimitMs);
            }
        }
        finally
        {
            Interlocked.Decrement(ref s_sleepers);
        }
    }

    /// <summary>Wakes the threads sleeping on the gate, if any. Call after unfreezing entries (their state words
    /// stored); costs a full fence when nobody sleeps.</summary>
    public static void WakeSleepers()
    {
        Interlocked.MemoryBarrier();   // the unfreezing stores before the count's load (see the remarks)
        if (Volatile.Read(ref s_sleepers) == 0) return;
        lock (Gate) Monitor.PulseAll(Gate);
    }
}
