using System.Runtime.CompilerServices;
using Compaction.Allocator.Os;

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
/// </remarks>
public sealed unsafe partial class NativeHeap : IDisposable
{
    private static readonly bool[] s_tagsInUse = new bool[256];   // tag 0 is never used: default handles stay foreign
    private static int s_tagCursor;

    private readonly HeapOptions _options;
    private readonly byte _tag;
    private readonly ArenaMemory _memory;
    internal readonly PageMap Map;
    internal readonly Zone? NormalZone;
    internal readonly Zone? MovableZone;
    internal readonly SizeClasses Classes;
    internal readonly SlabAllocator[] Slabs;       // [BlockKind]
    internal readonly HandleTable Handles = new();
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
        _tag = TakeTag();

        int pageSize = _options.PageSize, pbPages = _options.PageblockPages;
        long maxOrderBytes = 2L * pageSize * pbPages;
        long arenaBytes = (_options.ArenaBytes + maxOrderBytes - 1) / maxOrderBytes * maxOrderBytes;
        int pageCount = checked((int)(arenaBytes / pageSize));
        _memory = new ArenaMemory((nuint)arenaBytes, (nuint)((long)pageSize * pbPages), _options.UseHugePages, _options.ForcePortableMemory);
        Map = new PageMap(_memory.Base, pageSize, pbPages, pageCount);

        // Zones are whole max-order blocks (two pageblocks), the normal zone first.
        int maxOrderBlocks = (int)(arenaBytes / maxOrderBytes);
        int movableBlocks = (int)Math.Round(maxOrderBlocks * _options.MovableZonePercent / 100.0);
        int split = (maxOrderBlocks - movableBlocks) * 2 * pbPages;
        if (split > 0) NormalZone = new Zone(ZoneKind.Normal, 0, split, Map, _memory, MigrateType.Unmovable);
        if (split < pageCount) MovableZone = new Zone(ZoneKind.Movable, split, pageCount, Map, _memory, MigrateType.Movable);
        _maxBlockSize = Math.Max(NormalZone?.PageCount ?? 0, MovableZone?.PageCount ?? 0) * (long)pageSize;

        Classes = new SizeClasses(_options.SlabThreshold, pageSize);
        Slabs = [new SlabAllocator(this, BlockKind.Movable, Classes, Map), new SlabAllocator(this, BlockKind.Unmovable, Classes, Map)];
        _cachesEnabled = _options.PerThreadCaches;
        if (MovableZone != null) Compactor = new Compactor(this, MovableZone);
        if (_options.BackgroundCompaction) StartBackgroundCompaction();
    }

    /// <summary>The live options (not a copy); read by the compactor.</summary>
    internal HeapOptions OptionsRef => _options;

    /// <summary>The options this heap was created with (a copy; changing it has no effect).</summary>
    public HeapOptions Options => _options.Clone();

    /// <summary>The largest size <see cref="Allocate"/> accepts: the size of the larger zone.</summary>
    public long MaxBlockSize => _maxBlockSize;

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
        return size <= Classes.Threshold ? TryAllocateSmall(size, kind, out handle) : TryAllocateRun(size, kind, out handle);
    }

    private bool TryAllocateSmall(long size, BlockKind kind, out BlockHandle handle)
    {
        int c = Classes.ClassOf(size);
        ThreadCache? tc = CurrentCache();
        nint addr;
        uint index;
        if (tc != null && EnterCache(tc))
        {
            // Fast path, no lock: a slot and an entry from this thread's stacks (about a dozen loads and stores).
            // ExitCache in a finally: a refill that throws (out of native memory for a handle chunk) must not leave
            // InUse set, or the next drain would wait for ever.
            try
            {
                addr = PopSlot(tc, kind, c);
                index = addr != 0 ? PopEntry(tc) : 0;
                if (index == 0 && addr != 0) { PushSlot(tc, kind, c, addr); addr = 0; }
                if (addr != 0) { tc.LiveBytes += size; tc.LiveBlocks++; }
            }
            finally
            {
                ExitCache(tc);
            }
        }
        else
        {
            addr = AllocateSlotDirect(kind, c);
            index = addr != 0 ? AllocateEntryDirect() : 0;
            if (index == 0 && addr != 0) { Slabs[(int)kind].FreeSlots(c, [addr]); addr = 0; }
            if (addr != 0) AddLiveDirect(size, 1);
        }
        if (addr == 0) { handle = default; return false; }
        *Slabs[(int)kind].ReverseMapWord(addr, c) = (int)index;
        handle = Publish(index, addr, size, kind, run: false);
        return true;
    }

    private bool TryAllocateRun(long size, BlockKind kind, out BlockHandle handle)
    {
        int pages = checked((int)((size + Map.PageSize - 1) >> Map.PageShift));
        uint index = AllocateEntryDirect();
        if (index == 0) { handle = default; return false; }
        int start = AllocatePageRun(pages, kind, PageRunInit.Run(index));
        if (start < 0 && kind == BlockKind.Movable && Compactor != null && _options.DirectCompaction)
            start = Compactor.DirectCompact(pages, index);
        if (start < 0)
        {
            ReleaseEntryDirect(index);
            handle = default;
            return false;
        }
        AddLiveDirect(size, 1);
        handle = Publish(index, Map.AddressOf(start), size, kind, run: true);
        return true;
    }

    /// <summary>Writes a run's descriptors: head names its handle, tails name their head. Caller holds the zone lock.</summary>
    internal void InitRun(int start, int count, uint index)
    {
        ref PageDescriptor h = ref Map.Page(start);
        h.Kind = PageKind.RunHead;
        h.RefCount = 1;
        h.PinCount = 0;
        h.Aux = (int)index;
        h.Aux2 = count;
        for (int p = start + 1; p < start + count; p++)
        {
            ref PageDescriptor t = ref Map.Page(p);
            t.Kind = PageKind.Tail;
            t.Aux = start;
            t.PinCount = 0;
        }
    }

    /// <summary>Fills an entry and makes it live: the release store of the state word publishes address and size.</summary>
    private BlockHandle Publish(uint index, nint addr, long size, BlockKind kind, bool run)
    {
        HandleEntry* e = Handles.Get(index);
        uint generation = EntryState.Generation(e->State);
        e->Address = addr;
        e->Size = size;
        long state = EntryState.WithGeneration(generation) | EntryState.Allocated
            | (kind == BlockKind.Movable ? EntryState.Movable : 0) | (run ? EntryState.Run : 0);
        Volatile.Write(ref e->State, state);
        return new BlockHandle(HandleBits.Encode(_tag, generation, index));
    }

    /// <summary>
    /// Allocates an exact page run for blocks of <paramref name="kind"/>: unmovable runs from the normal zone; movable
    /// runs from the movable zone, falling back to movable pageblocks of the normal zone (like the kernel's zonelist).
    /// The descriptors are written (as <paramref name="init"/> says) under the zone lock, so they are never seen
    /// half-written by a reader holding that lock. Returns the first page or -1.
    /// </summary>
    internal int AllocatePageRun(int pages, BlockKind kind, PageRunInit init)
    {
        MigrateType type = kind == BlockKind.Movable ? MigrateType.Movable : MigrateType.Unmovable;
        Zone? first = kind == BlockKind.Movable ? MovableZone : NormalZone;
        Zone? second = kind == BlockKind.Movable ? NormalZone : null;
        foreach (Zone? zone in (ReadOnlySpan<Zone?>)[first, second])
        {
            if (zone == null) continue;
            lock (zone.Lock)
            {
                int start = zone.AllocatePagesLocked(pages, type);
                if (start < 0) continue;
                if (init.SlabClass >= 0) Slabs[(int)kind].InitSlabDescriptors(init.SlabClass, start, pages);
                else InitRun(start, pages, init.HandleIndex);
                return start;
            }
        }
        return -1;
    }

    /// <summary>What <see cref="AllocatePageRun"/> writes into the new run's descriptors (no closure per call).</summary>
    internal readonly record struct PageRunInit(uint HandleIndex, int SlabClass)
    {
        public static PageRunInit Run(uint handleIndex) => new(handleIndex, -1);
        public static PageRunInit Slab(int sizeClass) => new(0, sizeClass);
    }

    /// <summary>Frees pages [start, start + count) to their zone. Takes the zone lock.</summary>
    internal void FreePageRun(int start, int count) => ZoneOf(start).FreePageRange(start, count);

    internal Zone ZoneOf(int page) => MovableZone != null && MovableZone.Contains(page) ? MovableZone : NormalZone!;

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
        long s;
        SpinWait spin = default;
        while (true)
        {
            s = Volatile.Read(ref e->State);
            CheckLive(handle, s);
            if ((s & EntryState.PinMask) != 0 || PinRegistry.IsPinnedByCurrentThread(e)) ThrowHelper.Pinned(handle);
            if ((s & EntryState.Frozen) != 0) { ThrowIfMigratingOnThisThread(e); spin.SpinOnce(); continue; } // a migration owns it for a copy's time
            long freed = EntryState.WithGeneration(EntryState.Generation(s) + 1);
            if (Interlocked.CompareExchange(ref e->State, freed, s) == s) break;
        }
        // The entry is ours now: no migration can freeze it (its CAS expects Allocated) and no pin can succeed.
        nint addr = e->Address;
        long size = e->Size;
        BlockKind kind = (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
        uint index = HandleBits.Index(handle.Value);
        if ((s & EntryState.HasOwner) != 0) ForgetOwner(index);
        if ((s & EntryState.Run) != 0)
        {
            FreePageRun(Map.PageOf(addr), (int)((size + Map.PageSize - 1) >> Map.PageShift));
            ReleaseEntryDirect(index);
            AddLiveDirect(-size, -1);
            return;
        }
        int c = Classes.ClassOf(size);
        ThreadCache? tc = CurrentCache();
        if (tc != null && EnterCache(tc))
        {
            try
            {
                PushSlot(tc, kind, c, addr);
                PushEntry(tc, index);
                tc.LiveBytes -= size;
                tc.LiveBlocks--;
            }
            finally
            {
                ExitCache(tc);
            }
        }
        else
        {
            Slabs[(int)kind].FreeSlots(c, [addr]);
            ReleaseEntryDirect(index);
            AddLiveDirect(-size, -1);
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
        CheckLive(handle, s);
        long size = e->Size;
        // Re-read: if the block was freed and the entry reused meanwhile, the size may be another block's.
        CheckLive(handle, Volatile.Read(ref e->State));
        return size;
    }

    /// <summary>The kind the block was allocated as.</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    public BlockKind GetKind(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        CheckLive(handle, s);
        return (s & EntryState.Movable) != 0 ? BlockKind.Movable : BlockKind.Unmovable;
    }

    /// <summary>The address of an unmovable block; it never changes until the block is freed.</summary>
    /// <exception cref="InvalidOperationException">The block is movable: pin it instead.</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    public nint GetStablePointer(BlockHandle handle)
    {
        HandleEntry* e = Locate(handle);
        long s = Volatile.Read(ref e->State);
        CheckLive(handle, s);
        if ((s & EntryState.Movable) != 0) ThrowHelper.NotUnmovable(handle);
        return e->Address;
    }

    /// <summary>True when <paramref name="handle"/> names a live block of this heap (never throws, except when disposed).</summary>
    public bool IsLive(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (HandleBits.Tag(v) != _tag || index == 0 || index >= Handles.Count) return false;
        long s = Volatile.Read(ref Handles.Get(index)->State);
        return (s & EntryState.Allocated) != 0 && (EntryState.Generation(s) & HandleBits.GenerationMask) == HandleBits.Generation(v);
    }

    // ------------------------------------------------------------------ handle validation

    /// <summary>Checks the tag and index of a handle and returns its entry (not yet its generation).
    /// Lock-free: the table never shrinks and never moves an entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* Locate(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (HandleBits.Tag(v) != _tag || index == 0 || index >= Handles.Count) LocateFailed(handle);
        return Handles.Get(index);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void LocateFailed(BlockHandle handle)
    {
        ulong v = handle.Value;
        if (v == 0) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Null);
        if (HandleBits.Tag(v) != _tag) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Foreign);
        ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Forged);
    }

    /// <summary>Throws when state word <paramref name="s"/> is not the live block <paramref name="handle"/> names.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CheckLive(BlockHandle handle, long s)
    {
        if ((s & EntryState.Allocated) == 0 || (EntryState.Generation(s) & HandleBits.GenerationMask) != HandleBits.Generation(handle.Value))
            ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Stale);
    }

    // ------------------------------------------------------------------ memory back to the OS

    /// <summary>Returns free memory to the OS so that resident memory falls: drains the per-thread caches, frees the
    /// empty slabs kept for reuse, decommits every wholly free pageblock (madvise DONTNEED and PROT_NONE on Linux),
    /// then purges free runs of at least 4 pages inside pageblocks still in use (madvise DONTNEED; they stay usable).
    /// Returns the bytes decommitted or purged.</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public long ReleaseFreeMemory()
    {
        if (_disposed) ThrowHelper.Disposed();
        DrainThreadCaches();
        ReleaseEmptySlabs();
        long bytes = 0;
        foreach (Zone? z in (ReadOnlySpan<Zone?>)[NormalZone, MovableZone])
        {
            if (z == null) continue;
            bytes += z.DecommitFreePageblocks();
            bytes += z.PurgeFreeBlocks(PurgeMinOrder);
        }
        return bytes;
    }

    /// <summary>Free runs shorter than 2^2 pages are left resident: purging them costs a system call per few pages
    /// and they are the first to be reused.</summary>
    private const int PurgeMinOrder = 2;

    /// <summary>Frees the empty slabs each class keeps for reuse.</summary>
    private void ReleaseEmptySlabs()
    {
        foreach (SlabAllocator slabs in Slabs)
            foreach (SlabClass cls in slabs.Class)
                lock (cls.Lock)
                    while (cls.GroupHeads[SlabAllocator.EmptyGroup] >= 0)
                        slabs.ReleaseSlabLocked(cls, cls.GroupHeads[SlabAllocator.EmptyGroup]);
    }

    // ------------------------------------------------------------------ dispose

    /// <summary>
    /// Releases the arena and all metadata. Every handle becomes invalid; later calls throw
    /// <see cref="ObjectDisposedException"/>. Calling it twice does nothing.
    /// </summary>
    /// <exception cref="InvalidOperationException">A block is still pinned (a <see cref="PinScope"/> not yet disposed,
    /// or a <see cref="BlockPin"/> not yet released). Nothing is released and the heap stays usable: release the pins
    /// and dispose again. Memory a pin exposes is therefore never unmapped under it.</exception>
    public void Dispose()
    {
        if (_disposed) return;
        StopDaemon();
        int pins = CountPins();
        if (pins > 0)
            throw new InvalidOperationException($"{pins} pin(s) are still held on blocks of this heap; release them before disposing it.");
        _disposed = true;
        ReleaseNative();
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the native memory of a heap nobody disposed, unless a pin still exposes it.</summary>
    ~NativeHeap()
    {
        if (!_disposed && CountPins() == 0) ReleaseNative();
    }

    /// <summary>A heap tag no live heap holds, so that a handle of one heap is always foreign to another. With 255
    /// heaps alive at once the tags run out and the next heap shares one (then stale-generation checks are all that
    /// tell two such heaps' handles apart).</summary>
    private static byte TakeTag()
    {
        lock (s_tagsInUse)
        {
            for (int i = 0; i < 255; i++)
            {
                int tag = (s_tagCursor + i) % 255 + 1;
                if (s_tagsInUse[tag]) continue;
                s_tagsInUse[tag] = true;
                s_tagCursor = tag;
                return (byte)tag;
            }
            return (byte)(Interlocked.Increment(ref s_tagCursor) % 255 + 1);
        }
    }

    private void ReleaseNative()
    {
        lock (s_tagsInUse) s_tagsInUse[_tag] = false;
        _memory?.Dispose();   // null when the constructor threw (bad options) before reserving: the finalizer still runs
        Map?.Dispose();
        Handles.Dispose();
    }

    private int CountPins()
    {
        int pins = PinRegistry.CountPins(Handles.Owns);
        uint n = Handles.Count;
        for (uint i = 1; i < n; i++)
        {
            long s = Volatile.Read(ref Handles.Get(i)->State);
            if ((s & EntryState.Allocated) != 0) pins += (int)(s & EntryState.PinMask);
        }
        return pins;
    }

    internal ArenaMemory Memory => _memory;
}
