using System.Diagnostics;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Caches;
using Compaction.Allocator.Compaction;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Engine;
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
/// <para>Thread safety: every member may be called from any thread at the same time, <see cref="Dispose"/> included:
/// a call racing a Dispose either completes before the memory goes away or throws
/// <see cref="ObjectDisposedException"/>, and the Dispose refuses while a pin is held (see its remarks).</para>
/// <para>This class is the top layer, a thin façade: it builds the layers below it (pages, slabs, handles, caches,
/// the migrator, the compactor, the reclaimer, and the engine's classes: the slow allocation paths and the memory
/// limit, the background daemon, long-term pins, the statistics' walks) and hands each what it needs; none of them
/// sees the heap. What stays here is the public surface, the inlined fast paths (allocate, free, pin) and Dispose's
/// decision (native-layout.md, section 0).</para>
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
    // zone), the reclaimer and the memory limit's slices write them, the statistics read them.
    private readonly CompactionCounters _counters = new();
    private readonly LongTermPinCounts _longTermCounts = new();
    private readonly BackgroundFailures _backgroundFailures = new();
    private readonly AllocationPaths _paths;           // every allocation and free the fast paths do not finish
    private readonly MemoryLimitKeeper _limit;
    private readonly LongTermPinner _longTerm;
    private readonly CompactionDaemon _daemon;
    private readonly HeapInspector _inspector;
    private readonly TimeProvider _clock;              // _options.TimeProvider: the heap's one wall clock
    private readonly long _maxBlockSize;
    private readonly long _smallLimit;                 // _classes.Threshold: the largest slab block
    private readonly int _classCount;                  // _classes.Count: bins of one kind
    private readonly byte[] _classOf;                  // _classes' size-to-class table, one load nearer the fast paths
    private readonly bool _poisonFreed;                // _options.PoisonFreedMemory: the fast paths' one branch
    private volatile bool _disposed;

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
        _clock = _options.TimeProvider;
        try
        {
            HeapOptions o = _options;
            int pageSize = o.PageSize, pbPages = o.PageblockPages;
            long pageblockBytes = (long)pageSize * pbPages, maxOrderBytes = 2 * pageblockBytes;
            long arenaBytes = (o.ArenaBytes + maxOrderBytes - 1) / maxOrderBytes * maxOrderBytes;
            int pageCount = checked((int)(arenaBytes / pageSize));
            _memory = new ArenaMemory((nuint)arenaBytes, (nuint)pageblockBytes, o.UseHugePages, o.ForcePortableMemory, os,
                                      clearFirstCommit: o.PoisonFreedMemory);
            long limit = o.EffectiveMemoryLimit(), memoryLimit = 0;
            if (limit != 0)
            {
                // Whole pageblocks (what a commit takes), at least two: one per zone.
                memoryLimit = Math.Max(2 * pageblockBytes, limit / pageblockBytes * pageblockBytes);
                _memory.LimitBytes = memoryLimit;
                // The limit counts the metadata too: each pageblock's descriptors at its first commit, the handle
                // table's chunks (charged before the first Pop takes one), the bitmap (below).
                _memory.DescriptorBytesPerPageblock = (long)pbPages * sizeof(PageDescriptor);
                _handles.ChargeTo = _memory;
            }
            if (o.WasteHighRatio != 0) _memory.SoftLimitBytes = Math.Max(maxOrderBytes, o.WasteMinBytes);
            _map = new PageMap(_memory.Base, pageSize, pbPages, pageCount, os);
            if (memoryLimit != 0) _memory.ChargeMetadata(_map.PageblockBitmapBytes);
            _pages = new PageAllocator(_map, _memory, o.MovableZonePercent, o.PoisonFreedMemory);
            _poisonFreed = _pages.Poison.Enabled;
            _maxBlockSize = (long)_pages.LargestZonePages * pageSize;

            _classes = new SizeClasses(o.SlabThreshold, pageSize);
            _slabs = [new SlabAllocator(_pages, BlockKind.Movable, _classes), new SlabAllocator(_pages, BlockKind.Unmovable, _classes)];
            _smallLimit = _classes.Threshold;
            _classCount = _classes.Count;
            _classOf = _classes.ClassTable;
            _caches = new ThreadCaches(_slabs, _pages, _handles, _classes, o.PerThreadCaches, DepotRunBytes(arenaBytes));
            var footprint = new LiveFootprint(_pages, _slabs);
            _migrator = new Migrator(_handles, _pages, _slabs[(int)BlockKind.Movable], _slabs[(int)BlockKind.Unmovable], new OwnerRegistry());
            if (_pages.Movable != null)
                _compactor = new Compactor(CompactionSettingsOf(o), _pages, _slabs[(int)BlockKind.Movable], _handles, _migrator, _caches, footprint, _counters);
            _reclaimer = new Reclaimer(new ReclaimSettings(o.DecommitDelay, o.RetainedBytesLimit), _pages, _slabs, _caches, _counters);

            _limit = new MemoryLimitKeeper(
                new LimitSettings(memoryLimit, SoftLimitRatio(o), o.WasteMinBytes, pageblockBytes, o.CompactionSliceTime, o.DirectCompaction, _clock),
                _id, _memory, _caches, footprint, _handles, _reclaimer, _compactor, _counters, _longTermCounts);
            _paths = new AllocationPaths(new AllocationParts(_id, _map, _pages, _classes, _handles, _caches, _migrator, _compactor,
                                                             _reclaimer, _counters, _limit, _maxBlockSize, o.DirectCompaction, _clock));
            _longTerm = new LongTermPinner(_id, _map, _migrator, _paths, _longTermCounts, LongTermPinPatience);
            _daemon = new CompactionDaemon(new DaemonSettings(o.CompactionInterval, o.CompactionCpuShare, _clock, o.CpuClock, o.BackgroundBatchScheduling),
                                           new DaemonParts(_id, _memory, _pages, _caches, _compactor, _reclaimer, _limit, _counters, _backgroundFailures),
                                           anchor: this);
            _inspector = new HeapInspector(new InspectedParts(_id, _memory, _map, _pages, _classes, _slabs, _handles, _caches, _migrator,
                                                              _compactor, _counters, _longTermCounts, _backgroundFailures, memoryLimit, _clock));
        }
        catch
        {
            ReleaseNative();
            GC.SuppressFinalize(this);
            throw;
        }
        HeapMetrics.Register(_inspector);
        if (_options.BackgroundCompaction) StartBackgroundCompaction();
    }

    /// <summary>The options the compactor uses, as its own settings record (nothing below the API takes HeapOptions).</summary>
    private static CompactionSettings CompactionSettingsOf(HeapOptions o) => new(
        o.Proactiveness, o.CompactionBudgetBytes, o.CompactionBudgetTime, o.CompactionSliceTime, o.WasteHighRatio,
        o.WasteLowRatio, o.WasteMinBytes, o.RetainedBytesLimit, o.ThreadCachesDuringMigration, o.TimeProvider);

    /// <summary>The soft limit's multiple of the live footprint: the level a waste-driven run stops at, not the one it
    /// starts at, so that a churn's commits wait for the room consolidation makes until waste is down to where the
    /// background would bring it (a Redis-style churn's peak: 1.16x live at the start ratio, 1.11-1.12x at this one).
    /// 0 when the waste trigger is off.</summary>
    private static double SoftLimitRatio(HeapOptions o) => o.WasteHighRatio == 0 ? 0 : o.WasteLowRatio;

    /// <summary>Bytes of free runs the depot keeps for reuse: a quarter of the arena, at most 64 MiB.</summary>
    private static long DepotRunBytes(long arenaBytes) => Math.Min(64L << 20, arenaBytes / 4);

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

    /// <summary>This heap's id: unique in the process and never reused (the owner word of its handle-table chunks); the
    /// <see cref="HeapMetrics.HeapTag"/> of its measurements.</summary>
    public long Id => _id;

    /// <summary>True once <see cref="Dispose"/> has succeeded.</summary>
    public bool IsDisposed => _disposed;

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

    // The layers this heap built, for the test hooks (NativeHeapTestHooks.cs), the benchmarks and the tools: internal
    // views, read by nothing in the product.
    internal PageMap Map => _map;
    internal PageAllocator Pages => _pages;
    internal SizeClasses Classes => _classes;
    internal SlabAllocator[] Slabs => _slabs;
    internal HandleTable Handles => _handles;
    internal ArenaMemory Memory => _memory;
    internal Compactor? Compactor => _compactor;
    internal ThreadCaches Caches => _caches;
    internal Migrator Migrator => _migrator;
    internal Reclaimer Reclaimer => _reclaimer;
    internal CompactionDaemon Daemon => _daemon;

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
            if (handle != 0 && !_poisonFreed) AllocationPaths.PublishBound(handle, size, kind, run: false);
            ThreadCaches.Exit(tc);
            if (handle == 0) return _paths.AllocateSmallAfterMiss(size, kind, tc);
            return _poisonFreed ? _paths.PublishCheckedSlot(handle, size, kind, tc) : handle;
        }
        return _paths.AllocateSlow(size, kind, tc);
    }

    /// <summary>The size class of a slab block (<see cref="SizeClasses.ClassOf(long)"/> without the indirection).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int ClassOf(long size)
    {
        Debug.Assert(size >= 1 && size <= _smallLimit);
        return SizeClasses.ClassOf(_classOf, size);
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
                if (_poisonFreed) _paths.PoisonFreed(e->Address, s);
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
        _paths.FreeSlow(handle, e, tc, pins);
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
                daemonWasRunning = _daemon.Close();
                // No call is in flight from here on, and none starts until the decision (Close or Reopen). A call that
                // cannot wait (it is inside another section) or sections that do not drain while calls wait make
                // BeginClose give up, and Dispose refuses: it never waits for a thread that waits for it.
                closing = true;
                if (!_caches.BeginClose())
                    throw new InvalidOperationException("Calls on this heap are in flight that cannot finish while it is being disposed (one waits for another); dispose it when they have returned.");
                frozen = true;
                long pins = PinCensus.FreezeForDispose(_handles);
                if (pins != 0)
                    throw new InvalidOperationException($"{pins} pin(s) are still held on blocks of this heap; release them before disposing it.");
                _inspector.Close();   // a statistics snapshot in progress ends before the metadata goes
                _disposed = true;
                _daemon.HeapGone();
                _caches.Close();
            }
            catch
            {
                // Refused, or interrupted (a thread interrupt in a wait): the heap goes on as it was.
                if (frozen) PinCensus.ThawAfterRefusedDispose(_handles);
                if (closing) _caches.Reopen();
                _daemon.Reopen(daemonWasRunning);
                throw;
            }
            ReleaseNative();
            FrozenWait.WakeSleepers();   // a pin that met the Dispose's freeze sees the heap disposed now
        }
        GC.SuppressFinalize(this);
    }

    private readonly Lock _disposeLock = new();

    /// <summary>Releases the native memory of a heap nobody disposed, unless a pin still exposes it. The background
    /// thread holds the heap only weakly (and strongly only during a step), so an abandoned heap is finalized; its
    /// thread sees the heap gone at its next wake and ends. The statistics' walks are closed first: a metrics
    /// collection holds the inspector, not the heap, so one may be in progress.</summary>
    ~NativeHeap()
    {
        if (_disposed || CountPins() != 0) return;
        // Unreachable: no background step runs (a step holds the heap), and its threads find the heap gone. The parts
        // are null when the constructor threw before building them (its handle table is released all the same).
        _daemon?.HeapGone();
        _inspector?.Close();
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

    private int CountPins()
    {
        (int slot, int atomic) = PinCensus.CountByKind(_handles);
        return slot + atomic;
    }

    /// <summary>The <see cref="OutOfMemoryException"/> of a failed allocation, with the memory limit's reason when the
    /// limit stood in the way (for <see cref="Allocate"/> and <see cref="HeapContext.Allocate"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void ThrowOutOfMemory(long size, BlockKind kind) => _limit.ThrowOutOfMemory(size, kind);
}
