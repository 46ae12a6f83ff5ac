using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Handles;

/// <summary>
/// The process-wide handle table: one flat, reserved array of 16-byte entries shared by every heap
/// (<c>Base + index</c>), committed a chunk of 4096 entries at a time, and a directory word per chunk saying which
/// heap owns the chunk now (native-layout.md, "Handle table").
/// </summary>
/// <remarks>
/// <para>Why one table for all heaps: a handle carries only an index and a generation, and the index's chunk names
/// the heap that issued it. A chunk belongs to one heap at a time; a disposed heap gives its chunks back only after
/// freeing every entry in them (bumping their generations), so a later owner never honours an earlier owner's
/// handle, however many heaps live or have lived. Owner ids are 64-bit and never reused.</para>
/// <para>Why flat: an entry's address is <c>Base + index * 16</c>, one add from a handle with no directory load, and it
/// never changes (pin slots name entries by address). The range is reserved once (<see cref="MaxEntries"/> entries,
/// 16 GiB of address space on Linux, charged to nobody) and committed chunk by chunk, never decommitted: an index a
/// reader validated may still be read after its chunk changed hands. Entries are never freed either, only retired
/// (<see cref="EntryState.Retired"/>) when their generation runs out.</para>
/// <para>Guarantee: a heap accepts a handle only while the block it was issued for is live. An (index, generation)
/// pair is issued at most once in the process: a chunk's owner changes only after every entry in it is freed, and
/// an entry retires instead of wrapping its generation (<see cref="EntryState.Freed"/>). Exhaustion: an entry serves
/// 2^32 blocks (2^32 frees) before it retires; the table runs out only when <see cref="MaxEntries"/> entries are
/// retired or held by heaps (live, or free in a heap's list) — 2^62 frees at the earliest — or when the OS refuses to
/// commit a new chunk, and then allocation fails cleanly (TryAllocate returns false, Allocate throws
/// OutOfMemoryException).</para>
/// <para>Lock-free readers (every handle validation) read a chunk's owner word with an acquire load: a chunk is
/// committed and its entries initialised before its first owner is published (release), so a reader that sees an
/// owner sees the chunk. <see cref="Count"/> is raised (release) after a new chunk is complete.</para>
/// <para>Lock ordering: <see cref="s_lock"/> is a leaf, taken inside a heap's <see cref="HandleTable"/> lock.</para>
/// </remarks>
internal static unsafe class HandleStore
{
    public const int ChunkShift = 12;
    public const int ChunkEntries = 1 << ChunkShift;
    public const uint ChunkMask = ChunkEntries - 1;
    public const int EntryBytes = 16;
    public const long ChunkBytes = (long)ChunkEntries * EntryBytes;

    /// <summary>Entries the process may ever make (all heaps together); index 0 is never issued. 2^30 on Linux and Windows (the
    /// range is only reserved); 2^22 elsewhere, where the range is allocated up front.</summary>
    public static readonly uint MaxEntries = OsMemory.IsNative ? 1u << 30 : 1u << 22;
    public static readonly int MaxChunks = (int)(MaxEntries >> ChunkShift);

    /// <summary>Entry 0 of the flat table. Written once by the type initializer; never moves.</summary>
    public static readonly HandleEntry* Base = ReserveTable();

    // The directory, one owner word per chunk (MaxChunks * 8 bytes, 2 MiB of address space), mapped zeroed once and
    // never charged up front (MetadataMemory): the OS backs a page of it only when a word on it is first written.
    private static readonly long* s_owners = (long*)MetadataMemory.AllocateZeroed((nuint)MaxChunks * sizeof(long), OsMemory.Default);

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

    private static HandleEntry* ReserveTable()
    {
        Debug.Assert(sizeof(HandleEntry) == EntryBytes);
        // The real OS layer: the table is reserved once for the whole process, by the type initializer, before any
        // heap (and any heap's own layer) exists.
        void* p = MetadataMemory.Reserve((nuint)MaxEntries * EntryBytes, OsMemory.Default);
        if (p == null) throw new OutOfMemoryException($"the handle table could not reserve {(long)MaxEntries * EntryBytes} bytes of address space");
        return (HandleEntry*)p;
    }

    /// <summary>The owner word of the chunk holding <paramref name="index"/>, which must be below
    /// <see cref="MaxEntries"/> (0 when no heap owns it, or it was never made).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ref long OwnerWord(uint index)
    {
        Debug.Assert(index < MaxEntries);
        return ref s_owners[index >> ChunkShift];
    }

    /// <summary>The entry of <paramref name="index"/>, which must lie in a chunk already made. Lock-free: one add.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static HandleEntry* Get(uint index)
    {
        Debug.Assert(index < Count);
        return Base + index;
    }

    /// <summary>The index of <paramref name="entry"/> (an address in the table).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint IndexOf(HandleEntry* entry) => (uint)(entry - Base);

    /// <summary>The heap that owns the chunk of <paramref name="index"/> now; 0 when none does or the index is beyond
    /// the table. Lock-free (an acquire load of the owner word).</summary>
    public static long OwnerOf(uint index) => index < MaxEntries ? Volatile.Read(ref OwnerWord(index)) : 0;

    /// <summary>
    /// Gives a chunk to <paramref name="owner"/>: the most recently given-back one, else (or always, with
    /// <paramref name="newChunk"/>) a new one, committed here through <paramref name="os"/>, the asking heap's OS
    /// layer: the commit is made for that heap, and a refusal fails only its allocation. Takes the store lock (callers
    /// may hold their table's lock). Returns the chunk number, or -1 when the process has made
    /// <see cref="MaxEntries"/> entries and no chunk is free, or the OS refused to commit a new chunk (the store is
    /// unchanged: the range stays reserved and the next call tries again). Never throws.
    /// </summary>
    public static int TakeChunk(long owner, IOsMemory os, bool newChunk = false)
    {
        Debug.Assert(owner != 0);
        lock (s_lock)
        {
            if (!newChunk && s_freeChunks.TryPop(out int free))
            {
                Debug.Assert(s_owners[free] == 0);
                Volatile.Write(ref s_owners[free], owner);
                return free;
            }
            int c = s_chunkCount;
            if (c == MaxChunks || !MetadataMemory.Commit(Base + ((long)c << ChunkShift), (nuint)ChunkBytes, os)) return -1;
            Volatile.Write(ref s_owners[c], owner);   // publishes the committed, zeroed chunk (release)
            Volatile.Write(ref s_chunkCount, c + 1);
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
            Debug.Assert(s_owners[chunk] == owner, "only the owner gives a chunk back");
            Volatile.Write(ref s_owners[chunk], 0);
            s_freeChunks.Push(chunk);
        }
    }

    /// <summary>Counts <paramref name="n"/> newly retired entries.</summary>
    public static void CountRetired(long n) => Interlocked.Add(ref s_retired, n);
}
