using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Compaction.Allocator.Caches;

// The heap's side of the caches' protocols with other threads: the call sections and Dispose's closing protocol
// (native-layout.md, "Dispose and the closing protocol"), and the disable / drain protocol (lru_cache_disable,
// native-layout.md, "Disable / drain protocol"). The fast paths' cache section (Enter, Exit) stays with the pops and
// pushes in ThreadCaches.cs, where the JIT inlines it.
internal sealed unsafe partial class ThreadCaches
{
    private int _closing;                             // Closing protocol: Open, Deciding (a Dispose waits) or Closed
    private long _uncachedCalls;                      // call sections of threads without a cache of this heap (interlocked)
    private const int Open = 0, Deciding = 1, Closed = 2;
    private int _closeWaiters;                        // calls waiting for a Dispose's decision (interlocked)
    private int _closeAbort;                          // 1: a waiting call must not wait for long (BeginClose gives up)

    /// <summary>How long <see cref="BeginClose"/> waits for sections in flight while other calls wait for it before
    /// it gives up (the sections may be waiting for those calls, through the caller's own locks).</summary>
    private static readonly long CloseWaitLimitTicks = Stopwatch.Frequency / 5;

    // The sections without a cache this thread is in, innermost last (threads of heaps without caches only).
    [ThreadStatic] private static List<ThreadCaches>? t_uncachedSections;

    /// <summary>Marks the set closed (the heap is disposed): threads drop their caches of it on next lookup, and every
    /// call section that would start fails with <see cref="ObjectDisposedException"/>. Caller: a Dispose that
    /// <see cref="BeginClose"/>d, or the finalizer of a heap nobody can call any more.</summary>
    public void Close()
    {
        _closed = true;
        Volatile.Write(ref _closing, Closed);
    }

    // ------------------------------------------------------------------ call sections and the closing protocol

    /// <summary>
    /// Enters a call section: a slow path of an allocation or a free, a compaction, a release, a long-term pin, an
    /// owner change, a page walk — anything that touches the arena, the page map or the zones outside a cache section
    /// (native-layout.md, "Dispose and the closing protocol"). Pair with <see cref="ExitCall"/> in a finally.
    /// Lock-free: with a cache, a plain store of <see cref="ThreadCache.InCall"/> and a load of the closing word,
    /// Dekker's pattern against <see cref="BeginClose"/>'s store, barrier and loads (as in <see cref="Enter"/>); without
    /// one, an interlocked increment of the set's count. Nested sections on one thread pass without a check: the
    /// outer one already holds Dispose off.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The heap is disposed, or a Dispose is deciding while this thread is
    /// inside another section (waiting there could deadlock); a Dispose that is deciding is otherwise waited for, and
    /// when it is refused (pins held) the call goes on.</exception>
    public void EnterCall(ThreadCache? tc)
    {
        if (tc != null)
        {
            if (tc.InCall > 0)
            {
                tc.InCall++;
                return;
            }
            while (true)
            {
                Volatile.Write(ref tc.InCall, 1);
                if (Volatile.Read(ref _closing) == Open) return;
                Volatile.Write(ref tc.InCall, 0);
                WaitWhileDeciding();
            }
        }
        List<ThreadCaches> mine = t_uncachedSections ??= [];
        mine.EnsureCapacity(mine.Count + 1);   // first: a list that cannot grow throws before anything is counted
        if (!mine.Contains(this))
        {
            while (true)
            {
                Interlocked.Increment(ref _uncachedCalls);   // a full fence: the load below cannot pass it
                if (Volatile.Read(ref _closing) == Open) break;
                Interlocked.Decrement(ref _uncachedCalls);
                WaitWhileDeciding();
            }
        }
        else
        {
            Interlocked.Increment(ref _uncachedCalls);
        }
        mine.Add(this);
    }

    /// <summary>Leaves the section <see cref="EnterCall"/> entered (same <paramref name="tc"/>).</summary>
    public void ExitCall(ThreadCache? tc)
    {
        if (tc != null)
        {
            Debug.Assert(tc.InCall > 0, "ExitCall follows EnterCall");
            Volatile.Write(ref tc.InCall, tc.InCall - 1);
            return;
        }
        List<ThreadCaches> mine = t_uncachedSections!;
        mine.RemoveAt(mine.LastIndexOf(this));
        Interlocked.Decrement(ref _uncachedCalls);
    }

    /// <summary>A section could not start because a Dispose is deciding or done: waits for the decision, and throws
    /// once the heap is disposed. The wait is bounded: <see cref="BeginClose"/> gives up (and Dispose refuses) when
    /// sections in flight do not drain while calls wait, and at once when a waiting thread is itself inside a section
    /// (of any heap), so that no Dispose waits for a thread that waits for it.</summary>
    private void WaitWhileDeciding()
    {
        if (InAnySection()) Volatile.Write(ref _closeAbort, 1);
        Interlocked.Increment(ref _closeWaiters);
        try
        {
            SpinWait spin = default;
            while (true)
            {
                int closing = Volatile.Read(ref _closing);
                if (closing == Open) return;
                if (closing == Closed) ThrowHelper.Disposed();
                spin.SpinOnce();
            }
        }
        finally
        {
            Interlocked.Decrement(ref _closeWaiters);
        }
    }

    /// <summary>True when the calling thread is inside a call or cache section of any heap.</summary>
    public static bool InAnySection()
    {
        if (t_uncachedSections is { Count: > 0 }) return true;
        if (t_caches is { } caches)
            foreach (ThreadCache c in caches)
                if (c.InCall > 0 || c.InUse != 0) return true;
        return false;
    }

    /// <summary>
    /// The first half of Dispose's closing protocol: from now on no cache or call section starts (caches are switched
    /// off, so the fast paths fall to the slow ones, whose sections wait for the decision), and this returns once
    /// every section in flight has ended. Then nothing but pins can touch the heap's memory; Dispose deals with those
    /// and either <see cref="Close"/>s or <see cref="Reopen"/>s. Takes no lock; the caller is in no section of
    /// this heap and holds no heap lock.
    /// </summary>
    /// <returns>False when it gave up: a call waiting for the decision is inside another section, or sections in
    /// flight did not drain within <see cref="CloseWaitLimitTicks"/> while calls waited (a section may wait for one of
    /// them, through the caller's own locks). The caller then <see cref="Reopen"/>s and refuses.</returns>
    public bool BeginClose()
    {
        Interlocked.Increment(ref _cacheDisable);
        Volatile.Write(ref _closing, Deciding);
        // Make every section's entry store visible, and make every later entry see the closing word.
        Interlocked.MemoryBarrierProcessWide();
        long start = Stopwatch.GetTimestamp();
        // No lock is held while waiting: a section in flight may drain the caches (which takes the caches lock). A
        // cache registered after this snapshot had no section open before the barrier, so its owner sees Deciding.
        foreach (ThreadCache tc in Volatile.Read(ref _caches))
        {
            // A dead owner is in no section, whatever its flags say.
            SpinWait spin = default;
            while ((Volatile.Read(ref tc.InUse) | Volatile.Read(ref tc.InCall)) != 0 && tc.Owner.IsAlive)
            {
                if (ShouldGiveUp(start)) return false;
                spin.SpinOnce();
            }
        }
        SpinWait wait = default;
        while (Volatile.Read(ref _uncachedCalls) != 0)
        {
            if (ShouldGiveUp(start)) return false;
            wait.SpinOnce();
        }
        return true;
    }

    /// <summary>Racy reads of the abort flag and the waiter count (volatile): a waiter that registers just after this
    /// read is seen at the next turn of the wait loop, so the give-up comes one spin later, never not at all.</summary>
    private bool ShouldGiveUp(long start) =>
        Volatile.Read(ref _closeAbort) != 0
        || (Volatile.Read(ref _closeWaiters) != 0 && Stopwatch.GetTimestamp() - start > CloseWaitLimitTicks);

    /// <summary>Undoes <see cref="BeginClose"/> for a Dispose that was refused (or interrupted): caches on again, the
    /// waiting calls go on.</summary>
    public void Reopen()
    {
        Volatile.Write(ref _closeAbort, 0);
        Volatile.Write(ref _closing, Open);
        Interlocked.Decrement(ref _cacheDisable);
    }

    // ------------------------------------------------------------------ disable and drain

    /// <summary>
    /// Switches every thread's cache off and drains it and the depot (the kernel's lru_cache_disable): while the
    /// count of disablers is above zero, allocations and frees bypass the caches, so no cache can hold storage that a
    /// migration wants to move. Pair with <see cref="Enable"/> (a Disable that throws has undone itself). Takes
    /// <c>_cachesLock</c> and then depot, class, zone and handle-table locks one at a time; the caller must hold no
    /// heap lock.
    /// </summary>
    public void Disable()
    {
        Interlocked.Increment(ref _cacheDisable);
        try
        {
            DrainDisabledCaches();
        }
        catch
        {
            // A drain that failed (a list that could not grow, an interrupted lock wait) must not leave the caches off
            // for good: the caller never gets to pair it with Enable.
            Interlocked.Decrement(ref _cacheDisable);
            throw;
        }
    }

    /// <summary>Undoes one <see cref="Disable"/>.</summary>
    public void Enable() => Interlocked.Decrement(ref _cacheDisable);

    /// <summary>Empties every thread's cache and the depot back into the slabs, zones and handle table
    /// (lru_add_drain_all).</summary>
    public void Drain()
    {
        Disable();
        Enable();
    }

    public bool Disabled => Volatile.Read(ref _cacheDisable) > 0;

    private void DrainDisabledCaches()
    {
        var whole = default(DrainCursor);
        lock (_cachesLock) DrainFromLocked(ref whole, clock: null, deadline: 0);
    }

    /// <summary>
    /// A drain in steps, for a caller with a time budget (the waste-driven run's slices): the protocol of
    /// <see cref="Drain"/> (caches disabled, one barrier, each owner waited out of its section, everything unbound,
    /// caches enabled again), but it stops after the first cache or depot bin that held anything once
    /// <paramref name="clock"/> reads <paramref name="deadline"/> or later, and the next call goes on from
    /// <paramref name="cursor"/>. True when every cache and depot bin has been drained since the cursor was reset
    /// (<c>default</c>). A cache registered meanwhile may be missed and one pruned meanwhile may shift the list, so a
    /// thread's cache may be left for the next drain: what it holds only makes a few slab moves fail (cache-held), as
    /// what the threads cache after any drain does. A drain of everything at once took up to 10 ms when a thread had
    /// freed many blocks into the depot, all of it in one slice of 0.5 ms. Takes the locks of <see cref="Drain"/>.
    /// </summary>
    public bool DrainSome(ref DrainCursor cursor, TimeProvider clock, long deadline)
    {
        Interlocked.Increment(ref _cacheDisable);
        try
        {
            lock (_cachesLock) return DrainFromLocked(ref cursor, clock, deadline);
        }
        finally
        {
            Interlocked.Decrement(ref _cacheDisable);
        }
    }

    /// <summary>
    /// The drain itself, from <paramref name="cursor"/> on: one barrier (every owner's <c>InUse = 1</c> stored before
    /// it is visible to the waits below, and every owner entering after it sees the raised counter and stays out),
    /// then each thread's cache, waited out of its section and flushed, then each depot bin, then the dead threads'
    /// caches. With a <paramref name="clock"/>, stops after the first cache or bin that held anything once it reads
    /// <paramref name="deadline"/> or later (false: more is left). Caller holds <c>_cachesLock</c> and has raised the
    /// disable counter.
    /// </summary>
    private bool DrainFromLocked(ref DrainCursor cursor, TimeProvider? clock, long deadline)
    {
        Interlocked.MemoryBarrierProcessWide();
        ThreadCache[] caches = _caches;
        while (cursor.Cache < caches.Length)
        {
            ThreadCache tc = caches[cursor.Cache++];
            WaitOutOfSectionLocked(tc);
            if (FlushCache(tc, ownerDead: false) && clock != null && clock.GetTimestamp() >= deadline) return false;
        }
        var entries = new List<ulong>();
        while (cursor.Bin < _layout.Count)
        {
            bool any = DrainDepotBinLocked(cursor.Bin++, entries);
            if (any && clock != null && cursor.Bin < _layout.Count && clock.GetTimestamp() >= deadline) return false;
        }
        PruneDeadCachesLocked();
        return true;
    }

    /// <summary>Waits until the owner of <paramref name="tc"/> is out of its cache section (or dead: a dead owner is
    /// inside no section, whatever its flag says). Spins and yields for <see cref="DrainSpinsBeforeSleeping"/> turns
    /// before the 1 ms sleeps of <see cref="SpinWait"/>: a section is usually microseconds, and sleeping after
    /// SpinWait's default 20 turns made drains take 1-4 ms; a section that takes locks around a system call (a commit)
    /// may last longer, and is then waited for without burning the core. Caller holds <c>_cachesLock</c>, has raised
    /// the disable counter and issued the barrier.</summary>
    private static void WaitOutOfSectionLocked(ThreadCache tc)
    {
        SpinWait spin = default;
        while (Volatile.Read(ref tc.InUse) != 0 && tc.Owner.IsAlive) spin.SpinOnce(sleep1Threshold: DrainSpinsBeforeSleeping);
    }

    /// <summary>Turns of spinning and yielding before a drain waiting for an owner sleeps 1 ms at a time.</summary>
    private const int DrainSpinsBeforeSleeping = 200;

    /// <summary>Takes everything depot bin <paramref name="bin"/> holds and unbinds it; true when it held anything.
    /// Caller holds <c>_cachesLock</c> and has raised the disable counter.</summary>
    private bool DrainDepotBinLocked(int bin, List<ulong> entries)
    {
        entries.Clear();
        _depot.TakeAll(bin, entries);
        if (entries.Count == 0) return false;
        _binder.Unbind(bin, CollectionsMarshal.AsSpan(entries));
        return true;
    }

    /// <summary>Unbinds everything a cache holds; true when it held anything. The owner must be out of it (drain
    /// protocol) or dead; a dead owner's live counts move to the heap's direct counters, since the cache is about to be
    /// dropped. Each bin is emptied before its entries are unbound, so an exception midway leaks them rather than
    /// leaving them cached.</summary>
    private bool FlushCache(ThreadCache tc, bool ownerDead)
    {
        bool any = false;
        for (int bin = 0; bin < tc.Bins.Length; bin++)
        {
            ref CacheBin b = ref tc.Bins[bin];
            if (b.Count == 0) continue;
            ulong[] items = tc.Items.AsSpan(b.Offset, b.Count).ToArray();
            b.Count = 0;
            _binder.Unbind(bin, items);
            any = true;
        }
        tc.RunBytes = 0;
        if (ownerDead)
        {
            AddLiveDirect(tc.LiveBytes, tc.LiveBlocks);
            tc.LiveBytes = 0;
            tc.LiveBlocks = 0;
        }
        return any;
    }
}

/// <summary>Where an incremental drain (<see cref="ThreadCaches.DrainSome"/>) goes on: the next thread cache of the
/// list, then the next depot bin. <c>default</c> starts a drain afresh.</summary>
internal struct DrainCursor
{
    public int Cache;
    public int Bin;
}
