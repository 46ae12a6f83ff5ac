using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Caches;

/// <summary>
/// The per-thread caches of one heap and their depot: lookup, the fast pops and pushes of bound entries, refills and
/// flushes, the live-byte counters and the disable/drain protocol (native-layout.md, "Per-thread caches").
/// </summary>
/// <remarks>
/// Lock ordering: <see cref="_cachesLock"/> comes before the depot's bin locks, the class and zone locks and the
/// handle-table lock, which a drain takes one at a time. The fast paths take no lock.
/// </remarks>
internal sealed unsafe partial class ThreadCaches
{
    /// <summary>Bytes of runs one thread cache holds, at most.</summary>
    public const long ThreadRunBytes = 4L << 20;

    [ThreadStatic] private static ThreadCache? t_lastCache;
    [ThreadStatic] private static List<ThreadCache>? t_caches;

    private readonly CacheBins _layout;
    private readonly StorageBinder _binder;
    private readonly CacheDepot _depot;
    private readonly bool _cachesEnabled;
    private volatile bool _closed;                    // the heap was disposed: caches of it are dropped on sight
    private readonly Lock _cachesLock = new();       // guards _caches (copy on write) and serialises drains
    private ThreadCache[] _caches = [];
    private int _cacheDisable;                        // > 0: caches are off (lru_cache_disable's counter)
    private long _liveBytesDirect;                    // live bytes/blocks changed outside any cache (interlocked)
    private long _liveBlocksDirect;

    public ThreadCaches(SlabAllocator[] slabs, PageAllocator pages, HandleTable handles, SizeClasses classes, bool enabled, long depotRunBytes)
    {
        _layout = new CacheBins(classes, pages.Map.PageShift);
        _binder = new StorageBinder(slabs, pages, handles, _layout);
        _depot = new CacheDepot(_layout, depotRunBytes);
        _cachesEnabled = enabled;
    }

    /// <summary>How the caches are cut into bins.</summary>
    public CacheBins Layout => _layout;

    /// <summary>The calling thread's cache for this heap, or null when the heap runs without caches. One
    /// thread-local read when the thread last used this heap.</summary>
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
        var tc = new ThreadCache(this, _layout);
        // The prune flushes dead threads' caches into the slabs and zones: a call section (this thread has no
        // registered cache yet, so the uncached kind), which a Dispose waits for or which finds the heap disposed.
        EnterCall(null);
        try
        {
            lock (_cachesLock)
            {
                PruneDeadCachesLocked();
                _caches = [.. _caches, tc];
            }
        }
        finally
        {
            ExitCall(null);
        }
        mine.Add(tc);
        return t_lastCache = tc;
    }

    /// <summary>Flushes and forgets the caches of threads that have exited. Caller holds <see cref="_cachesLock"/>;
    /// a dead thread never touches its cache again, so no drain protocol is needed.</summary>
    private void PruneDeadCachesLocked()
    {
        Debug.Assert(_cachesLock.IsHeldByCurrentThread, "caller holds the caches lock");
        // One reading of IsAlive per cache: a thread that dies while we prune is either flushed and dropped here, or
        // kept for the next prune, never dropped unflushed (which would lose its entries and its live-byte count).
        ThreadCache[] dead = Array.FindAll(_caches, c => !c.Owner.IsAlive);
        if (dead.Length == 0) return;
        foreach (ThreadCache c in dead) _ = FlushCache(c, ownerDead: true);
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

    // ------------------------------------------------------------------ the fast pops and pushes (owner, entered)

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref CacheBin BinOf(ThreadCache tc, int bin) =>
        ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(tc.Bins), bin);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong ItemOf(ThreadCache tc, int i) =>
        ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(tc.Items), i);

    /// <summary>Pops a bound entry of slab bin <paramref name="bin"/> as the handle it is to be issued with, refilling
    /// the bin when empty (from the depot, else by binding fresh slots in a batch). 0 when the arena or the handle
    /// table is exhausted. A refill takes locks, and a contended lock can throw (<see cref="ThreadInterruptedException"/>):
    /// the slow paths then leave the cache section (InUse = 0) and the cache consistent before the exception goes on.
    /// No bounds checks: a bin's offset and capacity were fixed with the item array.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong PopSlot(ThreadCache tc, int bin)
    {
        ref CacheBin b = ref BinOf(tc, bin);
        int n = b.Count - 1;
        if (n < 0) return RefillSlots(tc, bin);
        b.Count = n;
        return ItemOf(tc, b.Offset + n);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private ulong RefillSlots(ThreadCache tc, int bin)
    {
        bool softLimit = ArenaMemory.SoftLimitApplies;
        try
        {
            ref CacheBin b = ref BinOf(tc, bin);
            Span<ulong> dst = tc.Items.AsSpan(b.Offset, Math.Min(512, Math.Max(1, b.Capacity / 2)));
            int n = _depot.Take(bin, dst);
            ArenaMemory.SoftLimitApplies = true;   // an allocation's refill: a commit respects the soft limit
            if (n == 0) n = _binder.BindSlots(bin, dst);
            if (n == 0) return 0;
            b.Count = n - 1;
            return dst[n - 1];
        }
        catch
        {
            Exit(tc);   // nothing was added to the bin; a drainer must not wait for this thread
            throw;
        }
        finally
        {
            ArenaMemory.SoftLimitApplies = softLimit;
        }
    }

    /// <summary>Pushes a bound free entry of slab bin <paramref name="bin"/>, as the handle it is to be issued with
    /// next; a full bin first moves its older half to the depot (and what the depot cannot take back to the slabs).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PushSlot(ThreadCache tc, int bin, ulong handle)
    {
        ref CacheBin b = ref BinOf(tc, bin);
        int n = b.Count;
        if (n == b.Capacity) n = FlushHalf(tc, bin);
        ItemOf(tc, b.Offset + n) = handle;
        b.Count = n + 1;
    }

    /// <summary>The batched free: the older half of a bin goes to the depot in one copy; what does not fit is
    /// unbound (storage to its slab or zone, entries to the table). Returns the bin's new count. The bin gives up the
    /// spilled half before any lock is taken, so an exception (a contended lock interrupted) can leak what was being
    /// spilled but never leave an entry both in the bin and in the depot.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private int FlushHalf(ThreadCache tc, int bin)
    {
        ref CacheBin b = ref BinOf(tc, bin);
        int move = Math.Max(1, b.Count / 2), keep = b.Count - move;   // at most 256: capacities are at most 512
        Span<ulong> items = tc.Items.AsSpan(b.Offset, b.Count);
        Span<ulong> spill = stackalloc ulong[move];
        items[..move].CopyTo(spill);
        items[move..].CopyTo(items);
        b.Count = keep;
        if (_layout.IsRun(bin)) tc.RunBytes -= move * _layout.RunBytes(bin);
        try
        {
            int put = _depot.Put(bin, spill);
            _binder.Unbind(bin, spill[put..]);
        }
        catch
        {
            Exit(tc);
            throw;
        }
        return keep;
    }

    /// <summary>Pops a bound free run of run bin <paramref name="bin"/> from the thread's bin, else a batch from the
    /// depot (as many as the thread's run budget allows); 0 when neither has one. Fresh runs are never bound ahead
    /// of need: a miss allocates exactly one from the zone.</summary>
    public ulong PopRun(ThreadCache tc, int bin)
    {
        ref CacheBin b = ref BinOf(tc, bin);
        long bytes = _layout.RunBytes(bin);
        int n = b.Count - 1;
        if (n >= 0)
        {
            b.Count = n;
            tc.RunBytes -= bytes;
            return ItemOf(tc, b.Offset + n);
        }
        try
        {
            long budget = Math.Max(0, ThreadRunBytes - tc.RunBytes) / bytes;   // runs the bin may keep after this one
            int want = (int)Math.Min(Math.Max(1, b.Capacity / 2), budget + 1);
            Span<ulong> dst = tc.Items.AsSpan(b.Offset, want);
            int got = _depot.Take(bin, dst);
            if (got == 0) return 0;
            b.Count = got - 1;
            tc.RunBytes += (got - 1) * bytes;
            return dst[got - 1];
        }
        catch
        {
            Exit(tc);
            throw;
        }
    }

    /// <summary>Pushes a bound free run; a full bin, or a cache over <see cref="ThreadRunBytes"/>, sends runs to the
    /// depot first (and what the depot cannot take back to the zones).</summary>
    public void PushRun(ThreadCache tc, int bin, ulong handle)
    {
        ref CacheBin b = ref BinOf(tc, bin);
        long bytes = _layout.RunBytes(bin);
        if (b.Count == b.Capacity || tc.RunBytes + bytes > ThreadRunBytes)
        {
            if (b.Count > 0) FlushHalf(tc, bin);
            if (tc.RunBytes + bytes > ThreadRunBytes)
            {
                // Other bins hold the thread's run budget: this run goes straight to the depot, or back to its zone.
                try
                {
                    ReadOnlySpan<ulong> one = [handle];
                    if (_depot.Put(bin, one) == 0) _binder.Unbind(bin, one);
                }
                catch
                {
                    Exit(tc);
                    throw;
                }
                return;
            }
        }
        ItemOf(tc, b.Offset + b.Count) = handle;
        b.Count++;
        tc.RunBytes += bytes;
    }

    // ------------------------------------------------------------------ without a cache (disabled, or none)

    /// <summary>Binds one fresh entry to one fresh slot of slab bin <paramref name="bin"/>; 0 when out of memory.</summary>
    public ulong BindSlotDirect(int bin)
    {
        Span<ulong> one = stackalloc ulong[1];
        return _binder.BindSlots(bin, one) == 1 ? one[0] : 0;
    }

    /// <summary>Unbinds one bound free entry: its storage back to the slab or zone, the entry to the table (unless
    /// retired).</summary>
    public void UnbindDirect(int bin, uint index, bool retired) => _binder.Unbind(bin, [index], entriesRetired: retired);

    public void AddLiveDirect(long bytes, long blocks)
    {
        Interlocked.Add(ref _liveBytesDirect, bytes);
        Interlocked.Add(ref _liveBlocksDirect, blocks);
    }

    /// <summary>Every registered cache (a copy-on-write array: a racy but consistent snapshot).</summary>
    public ThreadCache[] All => Volatile.Read(ref _caches);

    /// <summary>Slab slots currently held by all caches and the depot (racy; for statistics and tests).</summary>
    public long CachedSlots() => CountCached(runs: false);

    /// <summary>Runs currently held by all caches and the depot (racy; for statistics and tests).</summary>
    public long CachedRuns() => CountCached(runs: true);

    private long CountCached(bool runs)
    {
        long n = 0;
        int from = runs ? _layout.SlabBins : 0, to = runs ? _layout.Count : _layout.SlabBins;
        foreach (ThreadCache tc in Volatile.Read(ref _caches))
            for (int bin = from; bin < to; bin++) n += Volatile.Read(ref tc.Bins[bin].Count);
        for (int bin = from; bin < to; bin++) n += _depot.CountOf(bin);
        return n;
    }

    /// <summary>Every bound free entry in the caches and the depot, by bin, as the handle it will be issued with. For the validator: the heap must be
    /// quiescent.</summary>
    public void CollectCached(List<(int bin, ulong item)> into)
    {
        var depot = new List<ulong>();
        for (int bin = 0; bin < _layout.Count; bin++)
        {
            foreach (ThreadCache tc in Volatile.Read(ref _caches))
                for (int i = 0; i < tc.Bins[bin].Count; i++) into.Add((bin, tc.Items[tc.Bins[bin].Offset + i]));
            depot.Clear();
            _depot.CopyTo(bin, depot);
            foreach (ulong item in depot) into.Add((bin, item));
        }
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
