using System.Diagnostics;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Caches;

/// <summary>
/// The per-thread caches of one heap: lookup, the fast pops and pushes, refills and flushes, the live-byte counters
/// and the disable/drain protocol (native-layout.md, "Per-thread caches").
/// </summary>
/// <remarks>
/// Lock ordering: <see cref="_cachesLock"/> comes before the class locks and the handle-table lock, which a flush
/// takes one at a time. The fast paths take no lock.
/// </remarks>
internal sealed unsafe class ThreadCaches
{
    [ThreadStatic] private static ThreadCache? t_lastCache;
    [ThreadStatic] private static List<ThreadCache>? t_caches;

    private readonly SlabAllocator[] _slabs;         // [BlockKind]
    private readonly HandleTable _handles;
    private readonly SizeClasses _classes;
    private readonly bool _cachesEnabled;
    private volatile bool _closed;                    // the heap was disposed: caches of it are dropped on sight
    private readonly Lock _cachesLock = new();       // guards _caches (copy on write) and serialises drains
    private ThreadCache[] _caches = [];
    private int _cacheDisable;                        // > 0: caches are off (lru_cache_disable's counter)
    private long _liveBytesDirect;                    // live bytes/blocks changed outside any cache (interlocked)
    private long _liveBlocksDirect;

    public ThreadCaches(SlabAllocator[] slabs, HandleTable handles, SizeClasses classes, bool enabled)
    {
        _slabs = slabs;
        _handles = handles;
        _classes = classes;
        _cachesEnabled = enabled;
    }

    /// <summary>Marks the set closed (the heap is being disposed): threads drop their caches of it on next lookup.</summary>
    public void Close() => _closed = true;

    /// <summary>The calling thread's cache for this heap, or null when the heap runs without caches.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ThreadCache? Current()
    {
        ThreadCache? tc = t_lastCache;
        if (tc != null && tc.Set == this) return tc;
        return _cachesEnabled ? FindOrCreateCache() : null;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private ThreadCache FindOrCreateCache()
    {
        List<ThreadCache> mine = t_caches ??= [];
        mine.RemoveAll(c => c.Set._closed);
        foreach (ThreadCache c in mine)
            if (c.Set == this) return t_lastCache = c;
        var tc = new ThreadCache(this, _classes);
        mine.Add(tc);
        lock (_cachesLock)
        {
            PruneDeadCachesLocked();
            _caches = [.. _caches, tc];
        }
        return t_lastCache = tc;
    }

    /// <summary>Flushes and forgets the caches of threads that have exited. Caller holds <see cref="_cachesLock"/>;
    /// a dead thread never touches its cache again, so no drain protocol is needed.</summary>
    private void PruneDeadCachesLocked()
    {
        Debug.Assert(_cachesLock.IsHeldByCurrentThread, "caller holds the caches lock");
        // One reading of IsAlive per cache: a thread that dies while we prune is either flushed and dropped here, or
        // kept for the next prune, never dropped unflushed (which would lose its slots and its live-byte count).
        ThreadCache[] dead = Array.FindAll(_caches, c => !c.Owner.IsAlive);
        if (dead.Length == 0) return;
        foreach (ThreadCache c in dead) FlushCache(c, ownerDead: true);
        _caches = Array.FindAll(_caches, c => Array.IndexOf(dead, c) < 0);
    }

    /// <summary>
    /// Enters the owner's side of the drain protocol: publish InUse, then read the disable counter.
    /// Lock-free. The store may still sit in this core's store buffer when the load runs; the drainer's
    /// process-wide barrier (after it raised the counter) forces it out, so either we see the counter or the drainer
    /// sees InUse = 1 and waits. Volatile accesses are not reordered with each other by the JIT.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Enter(ThreadCache tc)
    {
        Volatile.Write(ref tc.InUse, 1);
        if (Volatile.Read(ref _cacheDisable) == 0) return true;
        Volatile.Write(ref tc.InUse, 0);
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Exit(ThreadCache tc) => Volatile.Write(ref tc.InUse, 0);

    // ------------------------------------------------------------------ slots

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public nint PopSlot(ThreadCache tc, BlockKind kind, int c)
    {
        int si = ThreadCache.StackIndex(kind, c, _classes.Count);
        int n = tc.SlotCount[si];
        if (n == 0) return RefillSlots(tc, kind, c, si);
        tc.SlotCount[si] = n - 1;
        return tc.Slots[si][n - 1];
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private nint RefillSlots(ThreadCache tc, BlockKind kind, int c, int si)
    {
        nint[] stack = tc.Slots[si];
        int n = _slabs[(int)kind].AllocateSlots(c, stack, Math.Max(1, stack.Length / 2));
        if (n == 0) return 0;
        tc.SlotCount[si] = n - 1;
        return stack[n - 1];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PushSlot(ThreadCache tc, BlockKind kind, int c, nint addr)
    {
        int si = ThreadCache.StackIndex(kind, c, _classes.Count);
        int n = tc.SlotCount[si];
        nint[] stack = tc.Slots[si];
        if (n == stack.Length) n = FlushSlots(tc, kind, c, si);
        stack[n] = addr;
        tc.SlotCount[si] = n + 1;
    }

    /// <summary>The batched free: the older half of a full stack goes back to its slabs under one class lock.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private int FlushSlots(ThreadCache tc, BlockKind kind, int c, int si)
    {
        nint[] stack = tc.Slots[si];
        int keep = stack.Length / 2;
        int n = tc.SlotCount[si];
        _slabs[(int)kind].FreeSlots(c, stack.AsSpan(0, n - keep));
        Array.Copy(stack, n - keep, stack, 0, keep);
        tc.SlotCount[si] = keep;
        return keep;
    }

    public nint AllocateSlotDirect(BlockKind kind, int c)
    {
        Span<nint> one = stackalloc nint[1];
        return _slabs[(int)kind].AllocateSlots(c, one, 1) == 1 ? one[0] : 0;
    }

    // ------------------------------------------------------------------ handle entries

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint PopEntry(ThreadCache tc)
    {
        int n = tc.EntryCount;
        if (n == 0) return RefillEntries(tc);
        tc.EntryCount = n - 1;
        return tc.Entries[n - 1];
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private uint RefillEntries(ThreadCache tc)
    {
        int n = _handles.Pop(tc.Entries.AsSpan(0, ThreadCache.EntryCapacity / 2));
        if (n == 0) return 0;
        tc.EntryCount = n - 1;
        return tc.Entries[n - 1];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PushEntry(ThreadCache tc, uint index)
    {
        int n = tc.EntryCount;
        if (n == ThreadCache.EntryCapacity)
        {
            int keep = ThreadCache.EntryCapacity / 2;
            _handles.Push(tc.Entries.AsSpan(keep, n - keep));
            n = keep;
        }
        tc.Entries[n] = index;
        tc.EntryCount = n + 1;
    }

    public uint AllocateEntryDirect()
    {
        Span<uint> one = stackalloc uint[1];
        return _handles.Pop(one) == 1 ? one[0] : 0;
    }

    public void ReleaseEntryDirect(uint index) => _handles.Push([index]);

    public void AddLiveDirect(long bytes, long blocks)
    {
        Interlocked.Add(ref _liveBytesDirect, bytes);
        Interlocked.Add(ref _liveBlocksDirect, blocks);
    }

    // ------------------------------------------------------------------ disable and drain

    /// <summary>
    /// Switches every thread's cache off and drains it (the kernel's lru_cache_disable): while the count of
    /// disablers is above zero, allocations and frees bypass the caches, so no cache can hold a slot that a
    /// migration wants to move. Pair with <see cref="Enable"/>. Takes <c>_cachesLock</c> and then class
    /// locks and the handle-table lock; the caller must hold no heap lock.
    /// </summary>
    public void Disable()
    {
        Interlocked.Increment(ref _cacheDisable);
        DrainDisabledCaches();
    }

    /// <summary>Undoes one <see cref="Disable"/>.</summary>
    public void Enable() => Interlocked.Decrement(ref _cacheDisable);

    /// <summary>Empties every thread's cache back into the slabs and the handle table (lru_add_drain_all).</summary>
    public void Drain()
    {
        Disable();
        Enable();
    }

    public bool Disabled => Volatile.Read(ref _cacheDisable) > 0;

    private void DrainDisabledCaches()
    {
        lock (_cachesLock)
        {
            // Make every owner's InUse store visible (and make them see the raised counter from now on).
            Interlocked.MemoryBarrierProcessWide();
            foreach (ThreadCache tc in _caches)
            {
                SpinWait spin = default;
                while (Volatile.Read(ref tc.InUse) != 0) spin.SpinOnce();
                FlushCache(tc, ownerDead: false);
            }
            PruneDeadCachesLocked();
        }
    }

    /// <summary>Returns everything a cache holds. The owner must be out of it (drain protocol) or dead; a dead
    /// owner's live counts move to the heap's direct counters, since the cache is about to be dropped.</summary>
    public void FlushCache(ThreadCache tc, bool ownerDead)
    {
        for (int si = 0; si < tc.Slots.Length; si++)
        {
            int n = tc.SlotCount[si];
            if (n == 0) continue;
            _slabs[si / _classes.Count].FreeSlots(si % _classes.Count, tc.Slots[si].AsSpan(0, n));
            tc.SlotCount[si] = 0;
        }
        if (tc.EntryCount > 0)
        {
            _handles.Push(tc.Entries.AsSpan(0, tc.EntryCount));
            tc.EntryCount = 0;
        }
        if (ownerDead)
        {
            AddLiveDirect(tc.LiveBytes, tc.LiveBlocks);
            tc.LiveBytes = 0;
            tc.LiveBlocks = 0;
        }
    }

    /// <summary>Every registered cache (a copy-on-write array: a racy but consistent snapshot).</summary>
    public ThreadCache[] All => Volatile.Read(ref _caches);

    /// <summary>Slots currently held by all caches (racy; for statistics and tests).</summary>
    public long CachedSlots()
    {
        long n = 0;
        foreach (ThreadCache tc in Volatile.Read(ref _caches))
            foreach (int count in tc.SlotCount) n += count;
        return n;
    }

    public (long bytes, long blocks) LiveTotals()
    {
        long bytes = Volatile.Read(ref _liveBytesDirect), blocks = Volatile.Read(ref _liveBlocksDirect);
        foreach (ThreadCache tc in Volatile.Read(ref _caches))
        {
            bytes += Volatile.Read(ref tc.LiveBytes);
            blocks += Volatile.Read(ref tc.LiveBlocks);
        }
        return (bytes, blocks);
    }
}
