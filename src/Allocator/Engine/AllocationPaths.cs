using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Pins;
using Compaction.Allocator.Reclaim;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Engine;

/// <summary>The parts of one heap the slow allocation and free paths use (the heap builds them).</summary>
internal sealed record AllocationParts(
    long Id, PageMap Map, PageAllocator Pages, SizeClasses Classes, HandleTable Handles, ThreadCaches Caches, Migrator Migrator,
    Compactor? Compactor, Reclaimer Reclaimer, CompactionCounters Counters, MemoryLimitKeeper Limit, long MaxBlockSize,
    bool DirectCompaction, TimeProvider Clock);

/// <summary>
/// The allocation and free paths behind the heap's inlined fast paths (native-layout.md, "Fast paths"): a small block
/// without a cache or after a cache miss, every run, the search for room when the arena or a limit refuses (parked
/// storage given back, direct compaction, the memory limit's slices), every free the fast path cannot finish, and
/// the poison checks of <c>PoisonFreedMemory</c>. Each entry is out of line (<c>NoInlining</c>) so that the fast paths
/// stay small; each runs in a call section (or a cache section) that a Dispose waits for.
/// </summary>
/// <remarks>Takes no lock of its own. Lock order of what it calls: the cache lock, then class and zone locks (the
/// layers below); RunLock (direct compaction, a limit slice) only with no cache section open.</remarks>
internal sealed unsafe class AllocationPaths(AllocationParts parts)
{
    private readonly long _id = parts.Id;
    private readonly PageMap _map = parts.Map;
    private readonly PageAllocator _pages = parts.Pages;
    private readonly SizeClasses _classes = parts.Classes;
    private readonly byte[] _classOf = parts.Classes.ClassTable;
    private readonly int _classCount = parts.Classes.Count;
    private readonly long _smallLimit = parts.Classes.Threshold;
    private readonly HandleTable _handles = parts.Handles;
    private readonly ThreadCaches _caches = parts.Caches;
    private readonly CacheBins _bins = parts.Caches.Layout;
    private readonly Migrator _migrator = parts.Migrator;
    private readonly Compactor? _compactor = parts.Compactor;
    private readonly Reclaimer _reclaimer = parts.Reclaimer;
    private readonly CompactionCounters _counters = parts.Counters;
    private readonly MemoryLimitKeeper _limit = parts.Limit;
    private readonly FreePoison _poison = parts.Pages.Poison;
    private readonly bool _poisonFreed = parts.Pages.Poison.Enabled;
    private readonly long _maxBlockSize = parts.MaxBlockSize;
    private readonly bool _directCompaction = parts.DirectCompaction;
    private readonly TimeProvider _clock = parts.Clock;

    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    // ------------------------------------------------------------------ publishing

    /// <summary>Makes a bound free entry live under <paramref name="handle"/> (its current generation and index, as a
    /// cache keeps it): its Address already names its storage, so one release store of the state word (generation,
    /// size bits, flags) publishes the block; the entry is not read. Inlined into the fast path.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong PublishBound(ulong handle, long size, BlockKind kind, bool run)
    {
        HandleEntry* e = HandleStore.Base + HandleBits.Index(handle);
        // Free and ours: no other thread writes the state word of a free entry, so the cached generation is current.
        Debug.Assert((e->State & (EntryState.Allocated | EntryState.Retired)) == 0, "only free, unretired entries are handed out");
        Debug.Assert(EntryState.Generation(e->State) == HandleBits.Generation(handle), "a cached handle carries the entry's generation");
        long flags = EntryState.Allocated | (kind == BlockKind.Movable ? EntryState.Movable : 0) | (run ? EntryState.Run : 0);
        Volatile.Write(ref e->State, ((long)handle & EntryState.GenerationMask) | EntryState.WithSize(size) | flags);
        return handle;
    }

    /// <summary>The handle a free entry of this heap will be issued with next.</summary>
    private static ulong NextHandle(uint index) => HandleBits.Encode(EntryState.Generation(HandleStore.Get(index)->State), index);

    /// <summary>The size class of a slab block (<see cref="SizeClasses.ClassOf(long)"/> without the indirection).</summary>
    private int ClassOf(long size)
    {
        Debug.Assert(size >= 1 && size <= _smallLimit);
        return SizeClasses.ClassOf(_classOf, size);
    }

    // ------------------------------------------------------------------ allocate

    /// <summary>Allocation without the small fast path: a small block while caches are off (or absent), and every run.
    /// Returns the handle's bits, 0 when there is no room.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The size is zero, negative or above the largest block.</exception>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public ulong AllocateSlow(long size, BlockKind kind, ThreadCache? tc)
    {
        if ((ulong)(size - 1) >= (ulong)_maxBlockSize) ThrowHelper.BadSize(size);
        if ((uint)kind > (uint)BlockKind.Unmovable) ThrowHelper.BadKind(kind);
        if (size > _smallLimit)
        {
            ulong run = AllocateRun(size, kind, tc);
            if (run == 0) _limit.NoteAllocationFailed(size, kind);
            if (_poisonFreed) RaiseUseAfterFreeEvents();
            return run;
        }
        ulong handle;
        using (new AllocationSection(_caches, tc)) handle = AllocateSmallDirect(size, kind);
        if (_poisonFreed) RaiseUseAfterFreeEvents();
        return handle != 0 ? handle : AllocateSmallAfterMiss(size, kind, tc);
    }

    /// <summary>A small block without a cache: one fresh entry bound to one fresh slot, published. 0 when out of room.
    /// Caller is in a call section.</summary>
    private ulong AllocateSmallDirect(long size, BlockKind kind)
    {
        ulong handle = _caches.BindSlotDirect((int)kind * _classCount + ClassOf(size));
        if (handle == 0) return 0;
        _caches.AddLiveDirect(size, 1);
        return PublishBound(handle, size, kind, run: false);
    }

    /// <summary>
    /// A small allocation that found no slot (the arena is full as far as its class can tell): free runs and other
    /// classes' slots parked in thread caches and the depot, and the empty slab each class keeps, hold pages no block
    /// uses. Drain and release them, then bind one slot directly; 0 when that freed nothing or still found no room.
    /// Called outside any cache section (a drain waits for every owner, this thread included, to be out of its own);
    /// runs in a call section.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public ulong AllocateSmallAfterMiss(long size, BlockKind kind, ThreadCache? tc)
    {
        ulong handle;
        using (new AllocationSection(_caches, tc))
        {
            RoomSearch room = default;
            handle = _limit.RaiseSoftLimit(ref room) ? AllocateSmallDirect(size, kind) : 0;
            if (handle == 0) handle = ReleaseParkedStorage() ? AllocateSmallDirect(size, kind) : 0;
            while (handle == 0 && _limit.NextRoomAttempt(ref room)) handle = AllocateSmallDirect(size, kind);
        }
        if (handle == 0) _limit.NoteAllocationFailed(size, kind);
        if (_poisonFreed) RaiseUseAfterFreeEvents();
        return handle;
    }

    /// <summary>Before an allocation fails (or compacts): storage parked in thread caches and the depot, and the empty
    /// slabs each class keeps, hold pages that no block uses (the kernel drains its per-CPU lists on the same path).
    /// Drains and frees them; true when that freed anything, so a retry can succeed (a refused commit is not retried).
    /// Takes the cache lock, then class and zone locks; the caller is in no cache section.</summary>
    public bool ReleaseParkedStorage()
    {
        bool cached = _caches.CachedSlots() + _caches.CachedRuns() > 0;
        if (cached) _caches.Drain();
        return _reclaimer.ReleaseEmptySlabs() > 0 || cached;
    }

    private ulong AllocateRun(long size, BlockKind kind, ThreadCache? tc)
    {
        int pages = _map.PagesFor(size);
        if (pages <= _bins.MaxRunPages && tc != null && _caches.Enter(tc))
        {
            // A bound free run of exactly this length from the thread's bin or the depot: no zone lock.
            ulong cached = _caches.PopRun(tc, _bins.RunBin(kind, pages));
            if (cached != 0)
            {
                tc.LiveBytes += size;
                tc.LiveBlocks++;
                if (!_poisonFreed)
                {
                    PublishBound(cached, size, kind, run: true);   // inside the cache section, which Dispose waits for
                    ThreadCaches.Exit(tc);
                    return cached;
                }
            }
            ThreadCaches.Exit(tc);
            if (cached != 0)
            {
                _caches.EnterCall(tc);
                try
                {
                    CheckRun(HandleStore.Get(HandleBits.Index(cached))->Address, pages, cached: true);
                    return PublishBound(cached, size, kind, run: true);
                }
                finally
                {
                    _caches.ExitCall(tc);
                }
            }
        }
        using (new AllocationSection(_caches, tc)) return AllocateRunFromZone(size, kind, pages);
    }

    /// <summary>A run from the zone's buddy allocator (after giving back parked storage, then after direct compaction,
    /// when it finds no room); 0 when there is none. Caller is in a call section.</summary>
    private ulong AllocateRunFromZone(long size, BlockKind kind, int pages)
    {
        Span<uint> one = stackalloc uint[1];
        if (_handles.Pop(one) == 0)
        {
            // No free entry and no new chunk: under a memory limit the chunk's charge may have been refused, and
            // making room (decommits, compaction) gives it a second chance; otherwise the table is exhausted.
            RoomSearch entry = default;
            bool popped = false;
            while (!popped && _limit.NextRoomAttempt(ref entry)) popped = _handles.Pop(one) != 0;
            if (!popped) return 0;
        }
        uint index = one[0];
        int start = _pages.AllocateRun(pages, kind, index);
        RoomSearch room = default;
        if (start < 0 && _limit.RaiseSoftLimit(ref room)) start = _pages.AllocateRun(pages, kind, index);
        if (start < 0 && ReleaseParkedStorage()) start = _pages.AllocateRun(pages, kind, index);
        if (start < 0 && kind == BlockKind.Movable && _compactor != null && _directCompaction)
        {
            // Direct compaction answers "is there a free run of this length?" (the kernel's question), not the soft
            // limit's: its capture commits as an allocation would, past the soft limit, so that a soft refusal never
            // counts as a failed compaction (which would defer the next ones).
            ArenaMemory.SoftLimitApplies = false;
            start = DirectCompact(_compactor, pages, index);
            ArenaMemory.SoftLimitApplies = true;
        }
        while (start < 0 && _limit.NextRoomAttempt(ref room)) start = _pages.AllocateRun(pages, kind, index);
        if (start < 0)
        {
            _handles.Push(one);
            return 0;
        }
        if (_poisonFreed) CheckRun(_map.AddressOf(start), pages, cached: false);
        _caches.AddLiveDirect(size, 1);
        HandleStore.Get(index)->Address = _map.AddressOf(start);
        return PublishBound(NextHandle(index), size, kind, run: true);
    }

    /// <summary>Direct compaction for a run allocation that failed, with its pass traced when a listener wants it.
    /// Caller is in a call section, in no cache section.</summary>
    private int DirectCompact(Compactor compactor, int pages, uint index)
    {
        if (!Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.Compaction)) return compactor.DirectCompact(pages, index);
        long[] before = _counters.Read();
        long t0 = _clock.GetTimestamp();
        Events.CompactionStart(_id, "direct", "async_then_sync_light");
        int start = compactor.DirectCompact(pages, index);
        Events.Pass(_id, "direct", "async_then_sync_light", _counters.Since(before), _clock.GetElapsedTime(t0));
        return start;
    }

    // ------------------------------------------------------------------ poison (PoisonFreedMemory on)

    /// <summary>Poisoning on: checks a popped slot's pattern (raising events for what it found, so outside the cache
    /// section) and publishes it, inside a call section.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public ulong PublishCheckedSlot(ulong handle, long size, BlockKind kind, ThreadCache tc)
    {
        _caches.EnterCall(tc);
        try
        {
            CheckCachedSlot(handle, size);
            return PublishBound(handle, size, kind, run: false);
        }
        finally
        {
            _caches.ExitCall(tc);
        }
    }

    /// <summary>Poisoning on: the slot of a bound free entry a cache handed out holds the pattern throughout (it was
    /// filled when its block was freed, or when it was bound); a changed byte is a write through a stale pointer,
    /// counted and reported, and the slot is handed out all the same (its contents are unspecified anyway). The entry
    /// is free and ours, so its Address is stable.</summary>
    private void CheckCachedSlot(ulong handle, long size)
    {
        _poison.Check(HandleStore.Get(HandleBits.Index(handle))->Address, _classes.Size[ClassOf(size)]);
        RaiseUseAfterFreeEvents();   // this one, and any a refill found under its class lock
    }

    /// <summary>Poisoning on: a run being handed out, from a cache (poisoned whole when its block was freed) or from
    /// free pages (each page the pattern or zero: purged, decommitted and never-used pages read as zero).</summary>
    private void CheckRun(nint address, int pages, bool cached)
    {
        long bytes = (long)pages << _map.PageShift;
        if (cached) _poison.Check(address, bytes);
        else _poison.CheckPoisonOrZero(address, bytes);
    }

    /// <summary>Poisoning on: the storage of a block just freed (the entry is ours, so Address is stable) is filled
    /// with the pattern, whole slot or whole pages, before it goes to a cache or back to its slab or zone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void PoisonFreed(nint address, long state)
    {
        long bytes = (state & EntryState.Run) != 0
            ? (long)_map.Page(_map.PageOf(address)).RunPages << _map.PageShift
            : _classes.Size[_classes.ClassOf(EntryState.SlabSize(state))];
        FreePoison.Fill(address, bytes);
    }

    /// <summary>Raises the use-after-free detections waiting in the poison (already counted), on the allocating
    /// thread, at the end of an allocation, when it holds no heap lock: a listener's code may call into the heap.
    /// Ones the compactor found (a destination slot) are raised by the next allocation.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RaiseUseAfterFreeEvents()
    {
        while (_poison.HasPending && _poison.TryTakePending(out (nint first, long changed) d))
            if (Events.IsEnabled(EventLevel.Error, NativeHeapEventSource.Keywords.Allocation)) Events.UseAfterFreeDetected(_id, d.first, d.changed);
    }

    // ------------------------------------------------------------------ free

    /// <summary>Every free the fast path does not finish: a bad or pinned handle (throws), a frozen block (waits for
    /// the copy), a retiring entry, a run, an owned block, or no cache (or caches switched off). Runs in a call
    /// section.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is stale.</exception>
    /// <exception cref="InvalidOperationException">The block is pinned.</exception>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void FreeSlow(BlockHandle handle, HandleEntry* e, ThreadCache? tc, ThreadPins pins)
    {
        _caches.EnterCall(tc);
        try
        {
            FreeInSection(handle, e, tc, pins);
        }
        finally
        {
            _caches.ExitCall(tc);
        }
    }

    private void FreeInSection(BlockHandle handle, HandleEntry* e, ThreadCache? tc, ThreadPins pins)
    {
        long s, freed;
        FrozenWait wait = default;
        while (true)
        {
            s = Volatile.Read(ref e->State);
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.PinMask) != 0 || PinRegistry.IsPinnedBy(pins, e)) ThrowHelper.Pinned(handle);
            if ((s & EntryState.Frozen) != 0) { FrozenByThisThread.ThrowIfFrozenHere(e); wait.Once(e); continue; } // a migration owns it for a copy's time
            // Generation + 1, or retirement when the generation would wrap (EntryState.Freed): a retired entry goes
            // back to no list, so it is never handed out again and its last handle stays stale for ever.
            freed = EntryState.Freed(s);
            if (Interlocked.CompareExchange(ref e->State, freed, s) == s) break;
        }
        // The entry is ours now. Its Address still names its storage, which stays bound to it unless it retired.
        if (_poisonFreed) PoisonFreed(e->Address, s);
        uint index = HandleBits.Index(handle.Value);
        bool retired = EntryState.IsRetired(freed);
        BlockKind kind = (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
        if (retired) _handles.NoteRetired();
        if ((s & EntryState.HasOwner) != 0) _migrator.Owners.Forget(index, s);
        long size;
        int bin;
        if ((s & EntryState.Run) != 0)
        {
            int pages = _map.Page(_map.PageOf(e->Address)).RunPages;   // ours: the run cannot move or be freed now
            size = _map.RunSize(e->Address, s);
            if (pages > _bins.MaxRunPages)
            {
                _pages.FreePoisonedPages(_map.PageOf(e->Address), pages);   // poisoned above when that is on
                if (!retired) _handles.Push([index]);
                _caches.AddLiveDirect(-size, -1);
                return;
            }
            bin = _bins.RunBin(kind, pages);
        }
        else
        {
            size = EntryState.SlabSize(s);
            bin = _bins.SlabBin(kind, _classes.ClassOf(size));
        }
        if (!retired && tc != null && _caches.Enter(tc))
        {
            ulong next = HandleBits.Encode(EntryState.Generation(freed), index);   // not retired: generation + 1
            if ((s & EntryState.Run) != 0) _caches.PushRun(tc, bin, next);
            else _caches.PushSlot(tc, bin, next);
            tc.LiveBytes -= size;
            tc.LiveBlocks--;
            ThreadCaches.Exit(tc);
            return;
        }
        _caches.UnbindDirect(bin, index, retired);
        _caches.AddLiveDirect(-size, -1);
    }
}
