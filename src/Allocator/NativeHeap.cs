using System.Diagnostics;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Os;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Pins;
using Compaction.Allocator.Reclaim;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator;

/// <summary>
/// An off-heap arena of native memory whose blocks are reached through <see cref="BlockHandle"/>s, so that movable
/// blocks can be relocated to keep free memory contiguous.
/// </summary>
/// <remarks>
/// <para>Design (native-layout.md is the map): the arena is one reserved virtual range cut into pages (4 KiB) and
/// pageblocks (512 pages), split into a normal zone (unmovable blocks) and a movable zone (movable blocks). A buddy
/// allocator per zone serves page runs; size-class slabs built on it serve blocks up to
/// <see cref="HeapOptions.SlabThreshold"/>. Per-thread caches hold free slots and handle entries, so the common
/// allocate and free take no lock.</para>
/// <para>Reaching a block's bytes: an unmovable block has a stable address (<see cref="GetStablePointer"/>); a movable
/// block is reached by pinning it (<see cref="Pin"/>, a scope), and a pinned block is never moved.</para>
/// <para>Thread safety: every member may be called from any thread at the same time, except <see cref="Dispose"/>,
/// which must not race with other calls on the same heap (as with any disposable resource).</para>
/// <para>This class is the top layer: it builds the layers below it (pages, slabs, handles, caches, the migrator,
/// the compactor, the reclaimer) and hands each what it needs; none of them sees the heap.</para>
/// </remarks>
public sealed unsafe partial class NativeHeap : IDisposable
{
    private readonly HeapOptions _options;
    private readonly ArenaMemory _memory;
    private readonly PageMap _map;
    private readonly PageAllocator _pages;
    private readonly SizeClasses _classes;
    private readonly SlabAllocator[] _slabs;       // [BlockKind]
    private readonly HandleTable _handles;             // this heap's share of the process-wide handle table
    private readonly long _id;                         // _handles.Owner, read by every handle validation
    private readonly ThreadCaches _caches;
    private readonly Migrator _migrator;
    private readonly Compactor? _compactor;        // null when the heap has no movable zone
    private readonly Reclaimer _reclaimer;
    // The compaction and reclaim counters, one set whatever zones the heap has: the compactor (when there is a movable
    // zone) and the reclaimer write them, the statistics read them.
    private readonly CompactionCounters _counters = new();
    private readonly long _maxBlockSize;
    private readonly long _smallLimit;                 // _classes.Threshold: the largest slab block
    private readonly int _classCount;                  // _classes.Count: bins of one kind
    private readonly byte[] _classOf;                  // _classes' size-to-class table, one load nearer the fast paths
    private readonly CacheBins _bins;                  // _caches.Layout
    private readonly FreePoison _poison;               // _pages.Poison
    private readonly bool _poisonFreed;                // _options.PoisonFreedMemory: the fast paths' one branch
    private volatile bool _disposed;
    private readonly long _memoryLimit;                // bytes the arena may hold committed; 0 for no limit
    private readonly double _softLimitRatio;           // the soft limit's multiple of live bytes (WasteHighRatio); 0: none

    /// <summary>Creates a heap. Reserves <see cref="HeapOptions.ArenaBytes"/> of address space; commits nothing yet.</summary>
    /// <param name="options">Settings, validated here; null for the defaults.</param>
    /// <exception cref="ArgumentException">An option is out of range; <see cref="ArgumentException.ParamName"/> names it.</exception>
    /// <exception cref="OutOfMemoryException">The address space could not be reserved.</exception>
    public NativeHeap(HeapOptions? options = null) : this(options, OsMemory.Default) { }

    /// <summary>Creates a heap whose system calls (reservation, commits, decommits, purges, advice, the handle
    /// table's new chunks) go through <paramref name="os"/>: tests hand it a layer that refuses chosen calls
    /// (native-layout.md, "The OS layer and fault injection").</summary>
    internal NativeHeap(HeapOptions? options, IOsMemory os)
    {
        Debug.Assert(os != null);
        _handles = new HandleTable(os);   // first: the finalizer of a heap whose constructor threw releases it
        _options = (options ?? new HeapOptions()).Clone();
        _options.Validate();
        _id = _handles.Owner;
        try
        {
            int pageSize = _options.PageSize, pbPages = _options.PageblockPages;
            long maxOrderBytes = 2L * pageSize * pbPages;
            long arenaBytes = (_options.ArenaBytes + maxOrderBytes - 1) / maxOrderBytes * maxOrderBytes;
            int pageCount = checked((int)(arenaBytes / pageSize));
            _memory = new ArenaMemory((nuint)arenaBytes, (nuint)((long)pageSize * pbPages), _options.UseHugePages, _options.ForcePortableMemory, os,
                                      clearFirstCommit: _options.PoisonFreedMemory);
            long limit = _options.EffectiveMemoryLimit();
            if (limit != 0)
            {
                // Whole pageblocks (what a commit takes), at least two: one per zone.
                long pageblockBytes = (long)pageSize * pbPages;
                _memoryLimit = Math.Max(2 * pageblockBytes, limit / pageblockBytes * pageblockBytes);
                _memory.LimitBytes = _memoryLimit;
                _memory.DescriptorBytesPerPageblock = (long)pbPages * sizeof(PageDescriptor);
                _handles.ChargeTo = _memory;   // before the first Pop takes a chunk
            }
            _softLimitRatio = _options.WasteHighRatio;
            if (_softLimitRatio != 0) _memory.SoftLimitBytes = Math.Max(2L * pageSize * pbPages, _options.WasteMinBytes);
            _map = new PageMap(_memory.Base, pageSize, pbPages, pageCount, os);
            if (_memoryLimit != 0) _memory.ChargeMetadata(_map.PageblockBitmapBytes);
            _pages = new PageAllocator(_map, _memory, _options.MovableZonePercent, _options.PoisonFreedMemory);
            _poison = _pages.Poison;
            _poisonFreed = _poison.Enabled;
            _maxBlockSize = (long)_pages.LargestZonePages * pageSize;

            _classes = new SizeClasses(_options.SlabThreshold, pageSize);
            _slabs = [new SlabAllocator(_pages, BlockKind.Movable, _classes), new SlabAllocator(_pages, BlockKind.Unmovable, _classes)];
            _smallLimit = _classes.Threshold;
            _classCount = _classes.Count;
            _classOf = _classes.ClassTable;
            _caches = new ThreadCaches(_slabs, _pages, _handles, _classes, _options.PerThreadCaches, DepotRunBytes(arenaBytes));
            _bins = _caches.Layout;
            _migrator = new Migrator(_handles, _pages, _slabs[(int)BlockKind.Movable], _slabs[(int)BlockKind.Unmovable], new OwnerRegistry());
            if (_pages.Movable != null)
                _compactor = new Compactor(CompactionSettingsOf(_options), _pages, _slabs[(int)BlockKind.Movable], _handles, _migrator, _caches, _counters);
            _reclaimer = new Reclaimer(new ReclaimSettings(_options.DecommitDelay, _options.RetainedBytesLimit), _pages, _slabs, _caches, _counters);
        }
        catch
        {
            ReleaseNative();
            GC.SuppressFinalize(this);
            throw;
        }
        HeapMetrics.Register(this);
        if (_options.BackgroundCompaction) StartBackgroundCompaction();
    }

    /// <summary>The options this heap was created with (a copy; changing it has no effect).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapOptions Options
    {
        get
        {
            if (_disposed) ThrowHelper.Disposed();
            return _options.Clone();
        }
    }

    /// <summary>The largest size <see cref="Allocate"/> accepts: the size of the larger zone.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long MaxBlockSize
    {
        get
        {
            if (_disposed) ThrowHelper.Disposed();
            return _maxBlockSize;
        }
    }

    /// <summary>
    /// A <see cref="HeapContext"/> for the calling thread: allocate, free and pin through it skip the thread-local
    /// lookup of the heap's own methods. Cheap (the thread's cache is made on its first use of the heap); obtain one
    /// per thread or per request and keep it on the stack.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public HeapContext GetThreadContext()
    {
        ThrowIfDisposed();
        ThreadCache? tc = _caches.Current();
        return new HeapContext(this, tc, tc != null ? tc.Pins : PinRegistry.Current);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ThrowIfDisposed()
    {
        if (_disposed) ThrowHelper.Disposed();
    }

    // ------------------------------------------------------------------ allocate

    /// <summary>Allocates a block of <paramref name="size"/> bytes. Its contents are unspecified.</summary>
    /// <remarks>Cost: tens of nanoseconds from the thread's cache or a slab (35-70 ns measured for 16 B-64 KiB);
    /// more when pages must be committed (a page fault per page first touched). When the arena has no free run of
    /// the size asked, and <see cref="HeapOptions.DirectCompaction"/> is on (the default), the call first runs
    /// direct compaction on this thread: passes of tens of milliseconds (up to 67 ms) were traced on a fragmented
    /// 1 GiB arena. Turn the option off to fail such an allocation at once instead.</remarks>
    /// <param name="size">At least 1 and at most <see cref="MaxBlockSize"/>.</param>
    /// <param name="kind">Movable (default) blocks may be relocated by compaction while unpinned; unmovable ones never move.</param>
    /// <returns>A handle to the block, valid until <see cref="Free"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="MaxBlockSize"/>.</exception>
    /// <exception cref="OutOfMemoryException">The arena has no room for the block.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockHandle Allocate(long size, BlockKind kind = BlockKind.Movable)
    {
        if (_disposed) ThrowHelper.Disposed();
        ulong handle = AllocateCore(size, kind, _caches.Current());
        if (handle == 0) ThrowOutOfMemory(size, kind);
        return new BlockHandle(handle);
    }

    /// <summary>Like <see cref="Allocate"/>, but returns false instead of throwing when the arena has no room.</summary>
    /// <remarks>Cost: as <see cref="Allocate"/>'s, direct compaction included.</remarks>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="MaxBlockSize"/>.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public bool TryAllocate(long size, BlockKind kind, out BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        handle = new BlockHandle(AllocateCore(size, kind, _caches.Current()));
        return !handle.IsNull;
    }

    /// <summary>
    /// Allocation with the thread's cache already in hand (the heap's methods look it up; a <see cref="HeapContext"/>
    /// holds it). Returns the handle's bits, 0 when the arena has no room. The small-block fast path, inlined into both
    /// callers whatever the JIT's profile says: check the request, enter the cache, pop a bound entry of the size
    /// class, publish it (native-layout.md, "Fast paths"). A value, not an out parameter: nothing on the path is
    /// address-exposed, so the JIT keeps it in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong AllocateCore(long size, BlockKind kind, ThreadCache? tc)
    {
        // One compare covers zero, negative and too large for a slab; the slow path sorts out the rest.
        if ((ulong)(size - 1) < (ulong)_smallLimit && (uint)kind <= (uint)BlockKind.Unmovable && tc != null && _caches.Enter(tc))
        {
            ulong handle = _caches.PopSlot(tc, (int)kind * _classCount + ClassOf(size));   // no bounds checks
            tc.LiveBytes += handle != 0 ? size : 0;
            tc.LiveBlocks += handle != 0 ? 1 : 0;
            // Published inside the cache section: a Dispose waits for it, so the entry's chunk is still this heap's.
            if (handle != 0 && !_poisonFreed) PublishBound(handle, size, kind, run: false);
            ThreadCaches.Exit(tc);
            if (handle == 0) return AllocateSmallAfterMiss(size, kind, tc);
            return _poisonFreed ? PublishCheckedSlot(handle, size, kind, tc) : handle;
        }
        return AllocateSlow(size, kind, tc);
    }

    /// <summary>Poisoning on: checks a popped slot's pattern (raising events for what it found, so outside the cache
    /// section) and publishes it, inside a call section.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private ulong PublishCheckedSlot(ulong handle, long size, BlockKind kind, ThreadCache tc)
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
    [MethodImpl(MethodImplOptions.NoInlining)]
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
    private void PoisonFreed(nint address, long state)
    {
        long bytes = (state & EntryState.Run) != 0
            ? (long)_map.Page(_map.PageOf(address)).RunPages << _map.PageShift
            : _classes.Size[_classes.ClassOf(EntryState.SlabSize(state))];
        _poison.Fill(address, bytes);
    }

    /// <summary>The size class of a slab block (<see cref="SizeClasses.ClassOf(long)"/> without the indirection).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int ClassOf(long size)
    {
        Debug.Assert(size >= 1 && size <= _smallLimit);
        return SizeClasses.ClassOf(_classOf, size);
    }

    /// <summary>Makes a bound free entry live under <paramref name="handle"/> (its current generation and index, as a
    /// cache keeps it): its Address already names its storage, so one release store of the state word (generation,
    /// size bits, flags) publishes the block; the entry is not read.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong PublishBound(ulong handle, long size, BlockKind kind, bool run)
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

    /// <summary>Allocation without the small fast path: a small block while caches are off (or absent), and every run.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private ulong AllocateSlow(long size, BlockKind kind, ThreadCache? tc)
    {
        if ((ulong)(size - 1) >= (ulong)_maxBlockSize) ThrowHelper.BadSize(size);
        if ((uint)kind > (uint)BlockKind.Unmovable) ThrowHelper.BadKind(kind);
        if (size > _smallLimit)
        {
            ulong run = AllocateRun(size, kind, tc);
            if (run == 0) NoteAllocationFailed(size, kind);
            if (_poisonFreed) RaiseUseAfterFreeEvents();
            return run;
        }
        ulong handle;
        using (new AllocationSection(_caches, tc)) handle = AllocateSmallDirect(size, kind);
        if (_poisonFreed) RaiseUseAfterFreeEvents();
        return handle != 0 ? handle : AllocateSmallAfterMiss(size, kind, tc);
    }

    /// <summary>A small block without a cache: one fresh entry bound to one fresh slot, published. 0 when out of room.</summary>
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
    private ulong AllocateSmallAfterMiss(long size, BlockKind kind, ThreadCache? tc)
    {
        ulong handle;
        using (new AllocationSection(_caches, tc))
        {
            RoomSearch room = default;
            handle = ReleaseParkedStorage() ? AllocateSmallDirect(size, kind) : 0;
            while (handle == 0 && NextRoomAttempt(ref room)) handle = AllocateSmallDirect(size, kind);
        }
        if (handle == 0) NoteAllocationFailed(size, kind);
        if (_poisonFreed) RaiseUseAfterFreeEvents();
        return handle;
    }

    /// <summary>Before an allocation fails (or compacts): storage parked in thread caches and the depot, and the empty
    /// slabs each class keeps, hold pages that no block uses (the kernel drains its per-CPU lists on the same path).
    /// Drains and frees them; true when that freed anything, so a retry can succeed (a refused commit is not retried).
    /// Takes the cache lock, then class and zone locks; the caller is in no cache section.</summary>
    private bool ReleaseParkedStorage()
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
            while (!popped && NextRoomAttempt(ref entry)) popped = _handles.Pop(one) != 0;
            if (!popped) return 0;
        }
        uint index = one[0];
        int start = _pages.AllocateRun(pages, kind, index);
        if (start < 0 && ReleaseParkedStorage()) start = _pages.AllocateRun(pages, kind, index);
        if (start < 0 && kind == BlockKind.Movable && _compactor != null && _options.DirectCompaction)
        {
            // Direct compaction answers "is there a free run of this length?" (the kernel's question), not the soft
            // limit's: its capture commits as an allocation would, past the soft limit, so that a soft refusal never
            // counts as a failed compaction (which would defer the next ones).
            ArenaMemory.SoftLimitApplies = false;
            start = DirectCompact(pages, index);
            ArenaMemory.SoftLimitApplies = true;
        }
        RoomSearch room = default;
        while (start < 0 && NextRoomAttempt(ref room)) start = _pages.AllocateRun(pages, kind, index);
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

    // ------------------------------------------------------------------ free

    /// <summary>Frees a block. Its handle, and every copy of it, becomes stale.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale (includes a double free).</exception>
    /// <exception cref="InvalidOperationException">The block is pinned (by a <see cref="BlockPin"/>, or by a
    /// <see cref="PinScope"/> of the calling thread); the block stays allocated.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    /// <remarks>A <see cref="PinScope"/> held by another thread at the same moment is a data race in the caller,
    /// which this call does not detect (see native-layout.md, "Pins"). Cost: tens of nanoseconds into the thread's
    /// cache; a block another thread allocated goes back through a batch (one lock per batch); with
    /// <see cref="HeapOptions.PoisonFreedMemory"/> the freed bytes are filled (microseconds for 4-64 KiB).</remarks>
    public void Free(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        ThreadCache? tc = _caches.Current();
        FreeCore(handle, e, tc, tc != null ? tc.Pins : PinRegistry.Current);
    }

    /// <summary>
    /// The free with the entry located and the thread's cache and pins in hand. Fast path, inlined into both callers:
    /// one load of the state word checks generation, pins, freeze, kind of storage and owner at once; the
    /// pinned-by-this-thread check reads the thread's pin record; one CAS frees the entry (what makes a free racing a
    /// migration safe); the bound entry goes back on the thread's stack (native-layout.md, "Fast paths").
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void FreeCore(BlockHandle handle, HandleEntry* e, ThreadCache? tc, ThreadPins pins)
    {
        const long slowBits = EntryState.GenerationMask | EntryState.Allocated | EntryState.PinMask | EntryState.Frozen
                              | EntryState.Run | EntryState.HasOwner;
        if (tc != null && _caches.Enter(tc))
        {
            // Inside the cache section from the first load: a Dispose waits for it before it frees anything.
            long s = Volatile.Read(ref e->State);
            long freed = (s & EntryState.GenerationMask) + EntryState.GenerationOne;   // 0 when the generation would wrap
            if (((s ^ HandleChecks.Expected(handle)) & slowBits) == 0   // live, this generation, unpinned, a slab slot, no owner
                && freed != 0                                            // else the entry retires (slow path)
                && !PinRegistry.IsPinnedBy(pins, e)
                && Interlocked.CompareExchange(ref e->State, freed, s) == s)
            {
                // The entry is ours now: no migration can freeze it (its CAS expects Allocated) and no pin can succeed.
                if (_poisonFreed) PoisonFreed(e->Address, s);
                long size = EntryState.SlabSize(s);
                int bin = ((s & EntryState.Movable) != 0 ? 0 : _classCount) + ClassOf(size);
                // Cached as the handle the entry will be issued with next: the new generation and the index.
                _caches.PushSlot(tc, bin, (ulong)freed | HandleBits.Index(handle.Value));
                tc.LiveBytes -= size;
                tc.LiveBlocks--;
                ThreadCaches.Exit(tc);
                return;
            }
            ThreadCaches.Exit(tc);
        }
        FreeSlow(handle, e, tc, pins);
    }

    /// <summary>Every other free: a bad or pinned handle (throws), a frozen block (waits for the copy), a retiring
    /// entry, a run, an owned block, or no cache (or caches switched off). Runs in a call section.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FreeSlow(BlockHandle handle, HandleEntry* e, ThreadCache? tc, ThreadPins pins)
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
        SpinWait spin = default;
        while (true)
        {
            s = Volatile.Read(ref e->State);
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.PinMask) != 0 || PinRegistry.IsPinnedBy(pins, e)) ThrowHelper.Pinned(handle);
            if ((s & EntryState.Frozen) != 0) { FrozenByThisThread.ThrowIfFrozenHere(e); spin.SpinOnce(); continue; } // a migration owns it for a copy's time
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

    // ------------------------------------------------------------------ queries

    /// <summary>The size requested for the block.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long GetSize(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        if ((s & EntryState.Run) == 0) return EntryState.SlabSize(s);
        // A run's page count is in its head descriptor, which is only stable while the run cannot move: read it
        // under a slot pin (or directly when this thread's owner callback holds the run frozen).
        if ((s & EntryState.Frozen) != 0 && FrozenByThisThread.Holds(e)) return _map.RunSize(e->Address, s);
        using PinScope pin = PinCore(handle, e, PinRegistry.Current);
        return pin.Length;
    }

    /// <summary>The kind the block was allocated as.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockKind GetKind(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        return (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
    }

    /// <summary>The address of an unmovable block; it never changes until the block is freed.</summary>
    /// <exception cref="InvalidOperationException">The block is movable: pin it instead.</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public nint GetStablePointer(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        HandleChecks.CheckLive(handle, s);
        if ((s & EntryState.Movable) != 0) ThrowHelper.NotUnmovable(handle);
        return e->Address;
    }

    // ------------------------------------------------------------------ dispose

    /// <summary>
    /// Releases the arena and all metadata. Every handle becomes invalid; later calls throw
    /// <see cref="ObjectDisposedException"/>. Calling it twice does nothing.
    /// </summary>
    /// <exception cref="InvalidOperationException">A block is still pinned (a <see cref="PinScope"/> not yet disposed,
    /// or a <see cref="BlockPin"/> not yet released), or the call comes from inside a compaction of this heap (a
    /// movable owner's callback) or from inside another call on this heap (an event listener). Nothing is released and the heap stays usable, background compaction included:
    /// release the pins, or return from the callback, and dispose again. Memory a pin or a running migration uses is
    /// therefore never unmapped under it.</exception>
    /// <remarks>Dispose may race any other call (native-layout.md, "Dispose and the closing protocol"): each call
    /// either completes before the memory goes away or throws <see cref="ObjectDisposedException"/>; a call that
    /// starts while a Dispose is deciding waits for the decision. Pins are counted with new pins held off, so no pin
    /// can slip in between the count and the unmap. Cost: it waits for the calls in flight, and walks every handle
    /// entry of the heap twice.</remarks>
    public void Dispose()
    {
        if (_disposed) return;
        if (FrozenByThisThread.Any || (_compactor?.RunLock.IsHeldByCurrentThread ?? false))
            throw new InvalidOperationException("A heap cannot be disposed from inside one of its compactions (a movable owner's callback); return from the callback first.");
        if (ThreadCaches.InAnySection())
            throw new InvalidOperationException("A heap cannot be disposed from inside a call on a heap (an event listener or callback it runs); dispose it after the call returns.");
        lock (_disposeLock)   // one Dispose at a time; the others wait for its decision
        {
            if (_disposed) return;
            bool daemonWasRunning = false, closing = false, frozen = false;
            try
            {
                // The background threads stop first (a step's owner callback may still take a pin).
                daemonWasRunning = CloseDaemons();
                // No call is in flight from here on, and none starts until the decision (Close or Reopen). A call that
                // cannot wait (it is inside another section) or sections that do not drain while calls wait make
                // BeginClose give up, and Dispose refuses: it never waits for a thread that waits for it.
                closing = true;
                if (!_caches.BeginClose())
                    throw new InvalidOperationException("Calls on this heap are in flight that cannot finish while it is being disposed (one waits for another); dispose it when they have returned.");
                frozen = true;
                long pins = FreezeForDispose();
                if (pins != 0)
                    throw new InvalidOperationException($"{pins} pin(s) are still held on blocks of this heap; release them before disposing it.");
                lock (_statsLock) _disposed = true;   // a statistics snapshot in progress ends before the metadata goes
                _caches.Close();
            }
            catch
            {
                // Refused, or interrupted (a thread interrupt in a wait): the heap goes on as it was.
                if (frozen) ThawAfterRefusedDispose();
                if (closing) _caches.Reopen();
                ReopenDaemons(daemonWasRunning);
                throw;
            }
            ReleaseNative();
        }
        GC.SuppressFinalize(this);
    }

    private readonly Lock _disposeLock = new();

    /// <summary>A call section for an entry point that touches the arena outside the allocation and free paths
    /// (<see cref="ThreadCaches.EnterCall"/>): <c>using Section _ = new(_caches);</c>. A Dispose waits for it.</summary>
    private readonly ref struct Section
    {
        private readonly ThreadCaches _caches;
        private readonly ThreadCache? _tc;

        /// <exception cref="ObjectDisposedException">The heap was disposed (or is being disposed, from inside another
        /// call).</exception>
        public Section(ThreadCaches caches)
        {
            _caches = caches;
            _tc = caches.Current();
            caches.EnterCall(_tc);
        }

        public void Dispose() => _caches.ExitCall(_tc);
    }

    /// <summary>The call section of an allocation made for a caller (the slow allocation paths): for its length the
    /// thread's commits respect the soft limit (<see cref="ArenaMemory.SoftLimitApplies"/>, restored at the end; a
    /// compaction, a long-term pin's move and the reclaimer never set it).</summary>
    private readonly ref struct AllocationSection
    {
        private readonly ThreadCaches _caches;
        private readonly ThreadCache? _tc;
        private readonly bool _softLimitBefore;

        /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
        public AllocationSection(ThreadCaches caches, ThreadCache? tc)
        {
            _caches = caches;
            _tc = tc;
            caches.EnterCall(tc);   // first: when it throws there is nothing to restore
            _softLimitBefore = ArenaMemory.SoftLimitApplies;
            ArenaMemory.SoftLimitApplies = true;
        }

        public void Dispose()
        {
            ArenaMemory.SoftLimitApplies = _softLimitBefore;
            _caches.ExitCall(_tc);
        }
    }

    /// <summary>
    /// Dispose's pin count, with new pins held off: every live entry is frozen (as a migration freezes the entries it
    /// moves: an atomic pin waits while its entry is frozen, a slot pin that sees the freeze retries), then a
    /// process-wide barrier, then the slot pins are counted — Dekker's argument of the pin protocol, so a pin either is
    /// counted here or sees the freeze (native-layout.md, "Pins"). Returns the pins found (atomic ones from the state
    /// words, slot pins from the registry). Caller: Dispose, after <see cref="ThreadCaches.BeginClose"/>, so no call
    /// section (no migration, no free) touches a state word meanwhile; only atomic pin releases do, and they keep the
    /// frozen bit.
    /// </summary>
    private long FreezeForDispose()
    {
        long atomic = 0;
        foreach (uint i in _handles.Indices())
        {
            HandleEntry* e = _handles.Get(i);
            while (true)
            {
                long s = Volatile.Read(ref e->State);
                if ((s & EntryState.Allocated) == 0) break;
                Debug.Assert((s & EntryState.Frozen) == 0, "no migration runs once the heap is closing");
                if (Interlocked.CompareExchange(ref e->State, s | EntryState.Frozen, s) != s) continue;
                atomic += s & EntryState.PinMask;
                break;
            }
        }
        Interlocked.MemoryBarrierProcessWide();
        return atomic + PinRegistry.CountPins(_handles.Owns);
    }

    /// <summary>Undoes <see cref="FreezeForDispose"/> for a refused Dispose: clears the frozen bit of every live entry
    /// (a CAS loop, since an atomic pin's release may change the word meanwhile); the pins that waited go on.</summary>
    private void ThawAfterRefusedDispose()
    {
        foreach (uint i in _handles.Indices())
        {
            HandleEntry* e = _handles.Get(i);
            while (true)
            {
                long s = Volatile.Read(ref e->State);
                if ((s & EntryState.Frozen) == 0) break;
                if (Interlocked.CompareExchange(ref e->State, s & ~EntryState.Frozen, s) == s) break;
            }
        }
    }

    /// <summary>Releases the native memory of a heap nobody disposed, unless a pin still exposes it. The background
    /// thread holds the heap only weakly (and strongly only during a step), so an abandoned heap is finalized; its
    /// thread sees the heap gone at its next wake and ends.</summary>
    ~NativeHeap()
    {
        if (_disposed || CountPins() != 0) return;
        // Unreachable: no background step runs (a step holds the heap), and its threads find the heap gone.
        _daemonStop?.Set();
        _caches?.Close();
        ReleaseNative();
    }

    /// <summary>Frees the arena and the metadata, and gives the handle chunks back to the process-wide table (every
    /// live entry freed first, so no later owner of a chunk accepts this heap's handles); safe on a half-built heap
    /// (a constructor that threw).</summary>
    private void ReleaseNative()
    {
        _memory?.Dispose();
        _map?.Dispose();
        _handles.Dispose();
    }

    /// <summary>The options the compactor uses, as its own settings record (nothing below the API takes HeapOptions).</summary>
    private static CompactionSettings CompactionSettingsOf(HeapOptions o) => new(
        o.Proactiveness, o.CompactionBudgetBytes, o.CompactionBudgetTime, o.CompactionSliceTime, o.WasteHighRatio,
        o.WasteLowRatio, o.WasteMinBytes, o.RetainedBytesLimit, o.ThreadCachesDuringMigration);

    /// <summary>Bytes of free runs the depot keeps for reuse: a quarter of the arena, at most 64 MiB.</summary>
    private static long DepotRunBytes(long arenaBytes) => Math.Min(64L << 20, arenaBytes / 4);

    private int CountPins()
    {
        (int slot, int atomic) = CountPinsByKind();
        return slot + atomic;
    }

    /// <summary>Slot pins (PinScope) on this heap's entries, and atomic pins (BlockPin, long-term pins, the Interop
    /// adapters). A walk of every entry: for Dispose and the metrics, not for a hot path.</summary>
    internal (int slot, int atomic) CountPinsByKind()
    {
        int slot = PinRegistry.CountPins(_handles.Owns);   // slot pins on entries of this heap's chunks only
        int atomic = 0;
        foreach (uint i in _handles.Indices())
        {
            long s = Volatile.Read(ref _handles.Get(i)->State);
            if ((s & EntryState.Allocated) != 0) atomic += (int)(s & EntryState.PinMask);
        }
        return (slot, atomic);
    }
}
