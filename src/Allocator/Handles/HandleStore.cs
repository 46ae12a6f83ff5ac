using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Handles;

/// <summary>
/// The process-wide handle table: every heap's handle entries live in native chunks of 4096 entries of one global
/// index space, and a directory slot per chunk says which heap owns the chunk now (native-layout.md, "Handle table").
/// </summary>
/// <remarks>
/// <para>Why one table for all heaps: a handle carries only an index and a generation, and the index's chunk names
/// the heap that issued it. A chunk belongs to one heap at a time; a disposed heap gives its chunks back only after
/// freeing every entry in them (bumping their generations), so a later owner never honours an earlier owner's
/// handle, however many heaps live or have lived. Owner ids are 64-bit and never reused.</para>
/// <para>Chunks are never freed or moved: an entry's address names it in pin slots, and a reader that validated an
/// index may still be reading its entry when the chunk changes hands. Entries are never freed either, only retired
/// (<see cref="EntryState.Retired"/>) when their generation runs out.</para>
/// <para>Guarantee: a heap accepts a handle only while the block it was issued for is live. An (index, generation)
/// pair is issued at most once in the process: a chunk's owner changes only after every entry in it is freed, and
/// an entry retires instead of wrapping its generation (<see cref="EntryState.Freed"/>). Exhaustion: an entry serves
/// 2^32 blocks (2^32 frees) before it retires; the table runs out only when <see cref="MaxEntries"/> entries are
/// retired or held by heaps (live, or free in a heap's list) — 2^62 frees at the earliest — and then allocation fails
/// cleanly (TryAllocate returns false, Allocate throws OutOfMemoryException).</para>
/// <para>Lock-free readers (every handle validation) read a directory slot: <see cref="HandleChunk.Entries"/> is
/// written before the chunk's first owner is published and never changes, and <see cref="HandleChunk.Owner"/> is
/// written with a release store and read with an acquire load, so a reader that sees an owner also sees the chunk.
/// <see cref="Count"/> is raised (release) after the new chunk's slot is complete.</para>
/// <para>Lock ordering: <see cref="s_lock"/> is a leaf, taken inside a heap's <see cref="HandleTable"/> lock.</para>
/// </remarks>
internal static unsafe class HandleStore
{
    public const int ChunkShift = 12;
    public const int ChunkEntries = 1 << ChunkShift;
    public const uint ChunkMask = ChunkEntries - 1;
    /// <summary>Entries the process may ever make (all heaps together); index 0 is never issued.</summary>
    public const uint MaxEntries = 1u << 30;
    public const int MaxChunks = (int)(MaxEntries >> ChunkShift);
    public const int EntryBytes = 32;
    public const long ChunkBytes = (long)ChunkEntries * EntryBytes;

    // The directory, MaxChunks slots of 16 bytes (4 MiB of address space), mapped zeroed once and never charged up
    // front (MetadataMemory): the OS backs a page of it only when a slot on it is first written (256 chunks a page).
    // A fixed directory needs no growth, hence no reallocation a lock-free reader could race with.
    private static readonly HandleChunk* s_directory = (HandleChunk*)MetadataMemory.AllocateZeroed((nuint)MaxChunks * (nuint)sizeof(HandleChunk));

    private static readonly Lock s_lock = new();
    private static readonly Stack<int> s_freeChunks = new();   // chunks no heap owns, most recently given back on top
    private static int s_chunkCount;                            // chunks made so far; written under s_lock, read lock-free
    private static long s_lastOwner;                            // the last owner id handed out
    private static long s_retired;                              // entries retired, all heaps together

    /// <summary>Entries made so far (all chunks, owned or not). An index at or above it was never issued: Forged.</summary>
    public static uint Count => (uint)Volatile.Read(ref s_chunkCount) << ChunkShift;

    /// <summary>Entries retired by all heaps together since the process started.</summary>
    public static long RetiredEntries => Volatile.Read(ref s_retired);

    /// <summary>A heap id no other heap has had or will have (64 bits: never exhausted in practice). Never 0.</summary>
    public static long NewOwner() => Interlocked.Increment(ref s_lastOwner);

    /// <summary>The directory slot of the chunk holding <paramref name="index"/>, which must be below
    /// <see cref="MaxEntries"/> (the slot may be unused: owner 0, no entries).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ref HandleChunk ChunkOf(uint index)
    {
        Debug.Assert(index < MaxEntries);
        return ref s_directory[index >> ChunkShift];
    }

    /// <summary>The entry of <paramref name="index"/>, which must lie in a chunk already made. Lock-free: the chunk's
    /// address is written before the chunk is published and never changes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static HandleEntry* Get(uint index)
    {
        Debug.Assert(index < Count);
        return (HandleEntry*)s_directory[index >> ChunkShift].Entries + (index & ChunkMask);
    }

    /// <summary>The heap that owns the chunk of <paramref name="index"/> now; 0 when none does or the index is beyond
    /// the table. Lock-free (an acquire load of the slot's owner).</summary>
    public static long OwnerOf(uint index) => index < MaxEntries ? Volatile.Read(ref ChunkOf(index).Owner) : 0;

    /// <summary>
    /// Gives a chunk to <paramref name="owner"/>: the most recently given-back one, else a new one. Takes the store
    /// lock (callers may hold their table's lock). Returns the chunk number, or -1 when the process has made
    /// <see cref="MaxEntries"/> entries and no chunk is free.
    /// </summary>
    /// <exception cref="OutOfMemoryException">No native memory for a new chunk.</exception>
    public static int TakeChunk(long owner)
    {
        Debug.Assert(owner != 0);
        lock (s_lock)
        {
            if (s_freeChunks.TryPop(out int free))
            {
                Debug.Assert(s_directory[free].Owner == 0);
                Volatile.Write(ref s_directory[free].Owner, owner);
                return free;
            }
            if (s_chunkCount == MaxChunks) return -1;
            nint entries = NewChunk();
            int c = s_chunkCount;
            s_directory[c].Entries = entries;
            Volatile.Write(ref s_directory[c].Owner, owner);   // publishes Entries (release)
            Volatile.Write(ref s_chunkCount, c + 1);          // publishes the slot
            return c;
        }
    }

    /// <summary>Takes <paramref name="chunk"/> back from <paramref name="owner"/>. Every entry in it must already be
    /// free or retired, with a generation no handle of <paramref name="owner"/> carries (the release store of the
    /// owner orders those writes before any later owner's reads). Takes the store lock.</summary>
    public static void GiveBack(int chunk, long owner)
    {
        lock (s_lock)
        {
            Debug.Assert(s_directory[chunk].Owner == owner, "only the owner gives a chunk back");
            Volatile.Write(ref s_directory[chunk].Owner, 0);
            s_freeChunks.Push(chunk);
        }
    }

    /// <summary>Counts <paramref name="n"/> newly retired entries.</summary>
    public static void CountRetired(long n) => Interlocked.Add(ref s_retired, n);

    private static nint NewChunk()
    {
        Debug.Assert(s_lock.IsHeldByCurrentThread, "caller holds the store lock");
        Debug.Assert(sizeof(HandleEntry) == EntryBytes);
        nint chunk = (nint)NativeMemory.AlignedAlloc((nuint)ChunkBytes, 64);
        NativeMemory.Clear((void*)chunk, (nuint)ChunkBytes);
        return chunk;
    }
}
