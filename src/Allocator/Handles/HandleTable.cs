using System.Diagnostics;
using System.Runtime.CompilerServices;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Handles;

/// <summary>
/// One heap's share of the process-wide handle table (<see cref="HandleStore"/>): the chunks it owns and its list of
/// free entries (native-layout.md, "Handle table").
/// </summary>
/// <remarks>
/// <para>The heap takes a chunk whenever its free list runs dry, and gives every chunk back on
/// <see cref="Dispose"/>, after freeing each live entry in them (generation + 1), so the dead heap's handles are
/// stale for the chunk's next owner. A chunk taken from the store threads its entries onto the free list, lowest
/// index on top, skipping retired ones: a retired entry is never handed out again, by any heap.</para>
/// <para>Free entries form a LIFO list through <see cref="HandleEntry.Address"/> (the next free index) under
/// <see cref="_lock"/>.
/// An entry reaches the list only free and not retired: the heap's Free retires an entry whose generation ran out
/// instead of returning it (<see cref="EntryState.Freed"/>).</para>
/// <para>Lock ordering: <see cref="_lock"/> is the innermost lock of the heap; the store's lock nests inside it.</para>
/// </remarks>
internal sealed unsafe partial class HandleTable : IDisposable
{
    public const int ChunkEntries = HandleStore.ChunkEntries;

    private readonly Lock _lock = new();
    private int[] _chunks = new int[4];   // chunk numbers owned, [0, _chunkCount); copy on write for lock-free readers
    private int _chunkCount;
    private uint _freeHead;               // 0 = empty (index 0 is never issued, so never free)
    private long _freeEntries;
    private long _retired;                // retired entries in the chunks this heap holds
    private long _growthFailures;         // chunks the store could not give (OS refusal or entries exhausted); under _lock
    private bool _disposed;
    private readonly IOsMemory _os;       // commits the new chunks this heap asks for

    /// <summary>The heap's arena when it has a memory limit: each chunk is charged to it as metadata before it is
    /// taken, and not taken when the limit refuses. Set once, before the first chunk is taken; null: nothing is charged.</summary>
    public ArenaMemory? ChargeTo { get; set; }

    /// <summary>Takes a fresh owner id; no chunk yet (the first <see cref="Pop"/> takes one). New chunks are
    /// committed through <paramref name="os"/>, the heap's OS layer.</summary>
    public HandleTable(IOsMemory os)
    {
        _os = os;
        Owner = HandleStore.NewOwner();
    }

    /// <summary>This heap's id in the chunk directory: unique in the process, never 0.</summary>
    public long Owner { get; }

    /// <summary>The entry of <paramref name="index"/>, which must lie in a chunk of this heap. Lock-free.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public HandleEntry* Get(uint index)
    {
        Debug.Assert(Owns(index), "the index lies in a chunk of this heap");
        return HandleStore.Get(index);
    }

    /// <summary>True when <paramref name="index"/> names an entry of this heap (a chunk it owns; never index 0).
    /// Lock-free: a chunk is given to this heap before any of its indices is issued, and taken away only by
    /// <see cref="Dispose"/>, which does not race with the heap's other calls.</summary>
    public bool Owns(uint index) => index != 0 && HandleStore.OwnerOf(index) == Owner;

    /// <summary>True when <paramref name="entry"/> is an entry of one of this heap's chunks (for counting pin slots,
    /// which name entries by address). Lock-free, like <see cref="Owns(uint)"/>.</summary>
    public bool Owns(nint entry)
    {
        nint offset = entry - (nint)HandleStore.Base;
        return offset >= 0 && offset < (nint)HandleStore.MaxEntries * HandleStore.EntryBytes
            && offset % HandleStore.EntryBytes == 0 && Owns((uint)(offset / HandleStore.EntryBytes));
    }

    /// <summary>Every index of this heap's chunks, live or not (index 0 left out). For validation and Dispose's pin
    /// count; the caller keeps the heap quiescent or tolerates a racy snapshot.</summary>
    public IEnumerable<uint> Indices()
    {
        (int[] chunks, int n) = OwnedChunks();
        for (int i = 0; i < n; i++)
        {
            uint first = (uint)chunks[i] << HandleStore.ChunkShift;
            for (uint index = Math.Max(first, 1); index < first + ChunkEntries; index++) yield return index;
        }
    }

    /// <summary>The chunks this heap owns: the first <c>n</c> of the array. Lock-free: the count is read first, then
    /// the list; a chunk is stored in the list (and a grown list published) before the count covers it (release /
    /// acquire), so every chunk counted is in the array read.</summary>
    private (int[] chunks, int n) OwnedChunks()
    {
        int n = Volatile.Read(ref _chunkCount);
        int[] chunks = Volatile.Read(ref _chunks);
        return (chunks, Math.Min(n, chunks.Length));
    }

    /// <summary>Pops up to <paramref name="dst"/>.Length free entries, taking chunks from the store as needed. Takes
    /// the table lock. Returns how many were popped: fewer only when the store has no chunk left to give
    /// (<see cref="HandleStore.MaxEntries"/> made, none free, or a new chunk not committed). Never throws, except on a
    /// disposed table.</summary>
    public int Pop(Span<uint> dst)
    {
        lock (_lock)
        {
            ThrowIfDisposedLocked();
            int n = 0;
            while (n < dst.Length)
            {
                if (_freeHead == 0 && !RefillLocked()) break;
                uint i = _freeHead;
                HandleEntry* e = HandleStore.Get(i);
                Debug.Assert((e->State & (EntryState.Allocated | EntryState.Retired)) == 0, "a free entry is neither live nor retired");
                _freeHead = (uint)e->Address;
                _freeEntries--;
                dst[n++] = i;
            }
            return n;
        }
    }

    /// <summary>Returns entries to the free list (unbinding them from any storage). Their state words must already
    /// carry the bumped generation, and none may be retired. Takes the table lock.</summary>
    public void Push(ReadOnlySpan<uint> entries)
    {
        lock (_lock)
        {
            ThrowIfDisposedLocked();
            foreach (uint i in entries)
            {
                HandleEntry* e = Get(i);
                Debug.Assert((e->State & (EntryState.Allocated | EntryState.Retired)) == 0, "only free, unretired entries are pushed");
                e->Address = (nint)_freeHead;
                _freeHead = i;
                _freeEntries++;
            }
        }
    }

    /// <summary>Counts an entry that the heap's Free retired (it is not pushed). Takes the table lock.</summary>
    public void NoteRetired()
    {
        lock (_lock) _retired++;
        HandleStore.CountRetired(1);
    }

    /// <summary>Takes chunks from the store until the free list has an entry (a recycled chunk may hold only retired
    /// ones). Caller holds the table lock. False when the store has no chunk to give.</summary>
    private bool RefillLocked()
    {
        Debug.Assert(_lock.IsHeldByCurrentThread, "caller holds the table lock");
        while (_freeHead == 0)
            if (!TakeChunkLocked()) return false;
        return true;
    }

    /// <summary>Takes a chunk from the store and threads its usable entries onto the free list, lowest index on top.
    /// Caller holds the table lock. False when the store has none to give.</summary>
    private bool TakeChunkLocked()
    {
        Debug.Assert(_lock.IsHeldByCurrentThread, "caller holds the table lock");
        if (_chunkCount == _chunks.Length)   // grow first: a chunk taken must be recorded, or Dispose could not return it
        {
            var bigger = new int[_chunks.Length * 2];
            Array.Copy(_chunks, bigger, _chunkCount);
            Volatile.Write(ref _chunks, bigger);
        }
        // Under a memory limit the chunk is charged first, and a refusal fails the allocation that needed it (its
        // caller then makes room under the limit, or reports the limit's reason).
        if (ChargeTo != null && !ChargeTo.TryChargeMetadata(HandleStore.ChunkBytes)) return false;
        int chunk = HandleStore.TakeChunk(Owner, _os, NewChunksOnly);
        if (chunk < 0)
        {
            ChargeTo?.ChargeMetadata(-HandleStore.ChunkBytes);
            Volatile.Write(ref _growthFailures, _growthFailures + 1);   // written under the lock, read without it
            return false;
        }
        _chunks[_chunkCount] = chunk;
        Volatile.Write(ref _chunkCount, _chunkCount + 1);
        uint first = (uint)chunk << HandleStore.ChunkShift, lowest = Math.Max(first, 1);   // index 0 is never issued
        for (uint i = first + ChunkEntries - 1; i >= lowest; i--)
        {
            HandleEntry* e = HandleStore.Get(i);
            Debug.Assert((e->State & EntryState.Allocated) == 0, "a chunk comes back with every entry freed");
            if (EntryState.IsRetired(e->State)) { _retired++; continue; }   // spent by an earlier owner: never reused
            e->Address = (nint)_freeHead;
            _freeHead = i;
            _freeEntries++;
        }
        return true;
    }

    private void ThrowIfDisposedLocked()
    {
        Debug.Assert(_lock.IsHeldByCurrentThread, "caller holds the table lock");
        // The chunks belong to other heaps now: touching their entries would corrupt them.
        ObjectDisposedException.ThrowIf(_disposed, this);
    }

    /// <summary>Native memory of this heap's chunks.</summary>
    public long MetadataBytes => Volatile.Read(ref _chunkCount) * HandleStore.ChunkBytes;

    /// <summary>Entries on the free list (thread caches hold more). Takes the table lock.</summary>
    public long FreeEntries { get { lock (_lock) return _freeEntries; } }

    /// <summary>Retired entries in this heap's chunks. Takes the table lock.</summary>
    public long RetiredEntries { get { lock (_lock) return _retired; } }

    /// <summary>Times the table needed a chunk and the store had none to give: the OS refused to commit a new one, or
    /// the process made every entry it may. Each failed the allocation that asked. A racy read of a counter only this
    /// table's lock holder writes: at worst one behind.</summary>
    public long GrowthFailures => Volatile.Read(ref _growthFailures);

    /// <summary>
    /// Frees every live entry (generation + 1, or retirement when it would wrap, as a Free does) and gives every chunk
    /// back to the store, so that the chunks' next owners reject this heap's handles as stale. The heap must be
    /// quiescent: no call, pin or migration may race with it (the heap's Dispose guarantees it). Takes the table lock.
    /// Calling it twice does nothing.
    /// </summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            long retired = 0;
            for (int c = 0; c < _chunkCount; c++)
            {
                uint first = (uint)_chunks[c] << HandleStore.ChunkShift;
                for (uint i = Math.Max(first, 1); i < first + ChunkEntries; i++)
                {
                    HandleEntry* e = HandleStore.Get(i);
                    long s = e->State;
                    if ((s & EntryState.Allocated) == 0) continue;   // free: its generation was never issued
                    Debug.Assert((s & EntryState.PinMask) == 0, "a disposed heap holds no pins (its live entries are frozen by Dispose)");
                    long freed = EntryState.Freed(s);
                    if (EntryState.IsRetired(freed)) retired++;
                    Volatile.Write(ref e->State, freed);
                }
                HandleStore.GiveBack(_chunks[c], Owner);   // after the bumps: the owner's release store orders them
            }
            if (retired > 0) HandleStore.CountRetired(retired);
            _chunkCount = 0;
            _freeHead = 0;
            _freeEntries = 0;
            _retired = 0;
        }
    }
}
