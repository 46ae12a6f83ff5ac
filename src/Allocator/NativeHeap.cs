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
    private readonly HandleTable _handles = new();   // this heap's share of the process-wide handle table
    private readonly long _id;                         // _handles.Owner, read by every handle validation
    private readonly ThreadCaches _caches;
    private readonly Migrator _migrator;
    private readonly Compactor? _compactor;        // null when the heap has no movable zone
    private readonly Reclaimer _reclaimer;
    private readonly long _maxBlockSize;
    private volatile bool _disposed;

    /// <summary>Creates a heap. Reserves <see cref="HeapOptions.ArenaBytes"/> of address space; commits nothing yet.</summary>
    /// <param name="options">Settings, validated here; null for the defaults.</param>
    /// <exception cref="ArgumentException">An option is out of range; <see cref="ArgumentException.ParamName"/> names it.</exception>
    /// <exception cref="OutOfMemoryException">The address space could not be reserved.</exception>
    public NativeHeap(HeapOptions? options = null)
    {
        _options = (options ?? new HeapOptions()).Clone();
        _options.Validate();
        _id = _handles.Owner;
        try
        {
            int pageSize = _options.PageSize, pbPages = _options.PageblockPages;
            long maxOrderBytes = 2L * pageSize * pbPages;
            long arenaBytes = (_options.ArenaBytes + maxOrderBytes - 1) / maxOrderBytes * maxOrderBytes;
            int pageCount = checked((int)(arenaBytes / pageSize));
            _memory = new ArenaMemory((nuint)arenaBytes, (nuint)((long)pageSize * pbPages), _options.UseHugePages, _options.ForcePortableMemory);
            _map = new PageMap(_memory.Base, pageSize, pbPages, pageCount);
            _pages = new PageAllocator(_map, _memory, _options.MovableZonePercent);
            _maxBlockSize = (long)_pages.LargestZonePages * pageSize;

            _classes = new SizeClasses(_options.SlabThreshold, pageSize);
            _slabs = [new SlabAllocator(_pages, BlockKind.Movable, _classes), new SlabAllocator(_pages, BlockKind.Unmovable, _classes)];
            _caches = new ThreadCaches(_slabs, _handles, _classes, _options.PerThreadCaches);
            _migrator = new Migrator(_handles, _pages, _slabs[(int)BlockKind.Movable], new OwnerRegistry(HandleOf));
            if (_pages.Movable != null)
                _compactor = new Compactor(_options, _pages, _slabs[(int)BlockKind.Movable], _handles, _migrator, _caches);
            _reclaimer = new Reclaimer(_options, _pages, _slabs, _caches, _compactor?.Counters ?? new CompactionStatistics());
        }
        catch
        {
            ReleaseNative();
            GC.SuppressFinalize(this);
            throw;
        }
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

    // ------------------------------------------------------------------ allocate

    /// <summary>Allocates a block of <paramref name="size"/> bytes. Its contents are unspecified.</summary>
    /// <param name="size">At least 1 and at most <see cref="MaxBlockSize"/>.</param>
    /// <param name="kind">Movable (default) blocks may be relocated by compaction while unpinned; unmovable ones never move.</param>
    /// <returns>A handle to the block, valid until <see cref="Free"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="MaxBlockSize"/>.</exception>
    /// <exception cref="OutOfMemoryException">The arena has no room for the block.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockHandle Allocate(long size, BlockKind kind = BlockKind.Movable)
    {
        if (!TryAllocate(size, kind, out BlockHandle handle)) ThrowHelper.OutOfMemory(size, kind);
        return handle;
    }

    /// <summary>Like <see cref="Allocate"/>, but returns false instead of throwing when the arena has no room.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is zero, negative or above <see cref="MaxBlockSize"/>.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public bool TryAllocate(long size, BlockKind kind, out BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        if ((ulong)(size - 1) >= (ulong)_maxBlockSize) ThrowHelper.BadSize(size);
        if ((uint)kind > (uint)BlockKind.Unmovable) throw new ArgumentOutOfRangeException(nameof(kind));
        return size <= _classes.Threshold ? TryAllocateSmall(size, kind, out handle) : TryAllocateRun(size, kind, out handle);
    }

    private bool TryAllocateSmall(long size, BlockKind kind, out BlockHandle handle)
    {
        int c = _classes.ClassOf(size);
        ThreadCache? tc = _caches.Current();
        nint addr;
        uint index;
        if (tc != null && _caches.Enter(tc))
        {
            // Fast path, no lock: a slot and an entry from this thread's stacks (about a dozen loads and stores).
            // Exit in a finally: a refill that throws (out of native memory for a handle chunk) must not leave
            // InUse set, or the next drain would wait for ever.
            try
            {
                // The entry first: its refill is what can throw (no memory for a new handle chunk), and then no slot
                // is held yet; an entry left over when no slot comes goes back on the stack.
                index = _caches.PopEntry(tc);
                addr = index != 0 ? _caches.PopSlot(tc, kind, c) : 0;
                if (addr == 0 && index != 0) _caches.PushEntry(tc, index);
                if (addr != 0) { tc.LiveBytes += size; tc.LiveBlocks++; }
            }
            finally
            {
                ThreadCaches.Exit(tc);
            }
        }
        else
        {
            index = _caches.AllocateEntryDirect();
            addr = index != 0 ? _caches.AllocateSlotDirect(kind, c) : 0;
            if (addr == 0 && index != 0) _caches.ReleaseEntryDirect(index);
            if (addr != 0) _caches.AddLiveDirect(size, 1);
        }
        if (addr == 0) { handle = default; return false; }
        *_slabs[(int)kind].ReverseMapWord(addr, c) = (int)index;
        handle = Publish(index, addr, size, kind, run: false);
        return true;
    }

    private bool TryAllocateRun(long size, BlockKind kind, out BlockHandle handle)
    {
        int pages = _map.PagesFor(size);
        uint index = _caches.AllocateEntryDirect();
        if (index == 0) { handle = default; return false; }
        int start = _pages.AllocateRun(pages, kind, index);
        if (start < 0)
        {
            // Before compacting (or failing): slots parked in thread caches and the empty slabs each class keeps hold
            // pages that no block uses (the kernel drains its per-CPU lists on the same path).
            // Retried only when that freed something: a refused commit is not retried here.
            bool cached = _caches.CachedSlots() > 0;
            if (cached) _caches.Drain();
            if (_reclaimer.ReleaseEmptySlabs() > 0 || cached) start = _pages.AllocateRun(pages, kind, index);
        }
        if (start < 0 && kind == BlockKind.Movable && _compactor != null && _options.DirectCompaction)
            start = _compactor.DirectCompact(pages, index);
        if (start < 0)
        {
            _caches.ReleaseEntryDirect(index);
            handle = default;
            return false;
        }
        _caches.AddLiveDirect(size, 1);
        handle = Publish(index, _map.AddressOf(start), size, kind, run: true);
        return true;
    }

    /// <summary>Fills an entry and makes it live: the release store of the state word publishes address and size.</summary>
    private BlockHandle Publish(uint index, nint addr, long size, BlockKind kind, bool run)
    {
        HandleEntry* e = _handles.Get(index);
        Debug.Assert((e->State & (EntryState.Allocated | EntryState.Retired)) == 0, "only free, unretired entries are handed out");
        uint generation = EntryState.Generation(e->State);
        e->Address = addr;
        e->Size = size;
        long state = EntryState.WithGeneration(generation) | EntryState.Allocated
            | (kind == BlockKind.Movable ? EntryState.Movable : 0) | (run ? EntryState.Run : 0);
        Volatile.Write(ref e->State, state);
        return new BlockHandle(HandleBits.Encode(generation, index));
    }

    // ------------------------------------------------------------------ free

    /// <summary>Frees a block. Its handle, and every copy of it, becomes stale.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale (includes a double free).</exception>
    /// <exception cref="InvalidOperationException">The block is pinned (by a <see cref="BlockPin"/>, or by a
    /// <see cref="PinScope"/> of the calling thread); the block stays allocated.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    /// <remarks>A <see cref="PinScope"/> held by another thread at the same moment is a data race in the caller,
    /// which this call does not detect (see native-layout.md, "Pins").</remarks>
    public void Free(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s, freed;
        SpinWait spin = default;
        while (true)
        {
            s = Volatile.Read(ref e->State);
            HandleChecks.CheckLive(handle, s);
            if ((s & EntryState.PinMask) != 0 || PinRegistry.IsPinnedByCurrentThread(e)) ThrowHelper.Pinned(handle);
            if ((s & EntryState.Frozen) != 0) { FrozenByThisThread.ThrowIfFrozenHere(e); spin.SpinOnce(); continue; } // a migration owns it for a copy's time
            // Generation + 1, or retirement when the generation would wrap (EntryState.Freed): a retired entry goes
            // back to no list, so it is never handed out again and its last handle stays stale for ever.
            freed = EntryState.Freed(s);
            if (Interlocked.CompareExchange(ref e->State, freed, s) == s) break;
        }
        // The entry is ours now: no migration can freeze it (its CAS expects Allocated) and no pin can succeed.
        nint addr = e->Address;
        long size = e->Size;
        BlockKind kind = (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
        uint index = HandleBits.Index(handle.Value);
        bool retired = EntryState.IsRetired(freed);
        if (retired) _handles.NoteRetired();
        if ((s & EntryState.HasOwner) != 0) _migrator.Owners.Forget(index, s);
        if ((s & EntryState.Run) != 0)
        {
            _pages.FreePages(_map.PageOf(addr), _map.PagesFor(size));
            if (!retired) _caches.ReleaseEntryDirect(index);
            _caches.AddLiveDirect(-size, -1);
            return;
        }
        int c = _classes.ClassOf(size);
        ThreadCache? tc = _caches.Current();
        if (tc != null && _caches.Enter(tc))
        {
            try
            {
                _caches.PushSlot(tc, kind, c, addr);
                if (!retired) _caches.PushEntry(tc, index);
                tc.LiveBytes -= size;
                tc.LiveBlocks--;
            }
            finally
            {
                ThreadCaches.Exit(tc);
            }
        }
        else
        {
            _slabs[(int)kind].FreeSlots(c, [addr]);
            if (!retired) _caches.ReleaseEntryDirect(index);
            _caches.AddLiveDirect(-size, -1);
        }
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
        long size = e->Size;
        // Re-read: if the block was freed and the entry reused meanwhile, the size may be another block's.
        HandleChecks.CheckLive(handle, Volatile.Read(ref e->State));
        return size;
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
    /// movable owner's callback). Nothing is released and the heap stays usable, background compaction included:
    /// release the pins, or return from the callback, and dispose again. Memory a pin or a running migration uses is
    /// therefore never unmapped under it.</exception>
    public void Dispose()
    {
        if (_disposed) return;
        if (FrozenByThisThread.Any || (_compactor?.RunLock.IsHeldByCurrentThread ?? false))
            throw new InvalidOperationException("A heap cannot be disposed from inside one of its compactions (a movable owner's callback); return from the callback first.");
        // The background threads stop first (a step's owner callback may still take a pin), then the pins are counted.
        bool daemonWasRunning = CloseDaemons();
        int pins = CountPins();
        if (pins > 0)
        {
            ReopenDaemons(daemonWasRunning);
            throw new InvalidOperationException($"{pins} pin(s) are still held on blocks of this heap; release them before disposing it.");
        }
        _disposed = true;
        _caches.Close();
        ReleaseNative();
        GC.SuppressFinalize(this);
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

    private int CountPins()
    {
        int pins = PinRegistry.CountPins(_handles.Owns);   // slot pins on entries of this heap's chunks only
        foreach (uint i in _handles.Indices())
        {
            long s = Volatile.Read(ref _handles.Get(i)->State);
            if ((s & EntryState.Allocated) != 0) pins += (int)(s & EntryState.PinMask);
        }
        return pins;
    }
}
