using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Handles;

/// <summary>
/// The handle table: native chunks of 4096 entries of 32 bytes, never moved or freed before the heap, so an entry's
/// address is stable and can itself be published in pin slots (native-layout.md, "Handle table").
/// </summary>
/// <remarks>
/// Index 0 is never issued. Free entries form a LIFO list through <see cref="HandleEntry.Link"/> under
/// <see cref="_lock"/>, the innermost lock of the heap. Readers validate an index against <see cref="Count"/> without a
/// lock: a chunk pointer is written before <see cref="Count"/> is raised past it (release), and a reader loads Count
/// before the chunk (acquire), so an index below Count always finds its chunk.
/// </remarks>
internal sealed unsafe class HandleTable : IDisposable
{
    public const int ChunkShift = 12;
    public const int ChunkEntries = 1 << ChunkShift;
    public const uint MaxEntries = 1u << 30;

    private readonly Lock _lock = new();
    private nint[] _chunks = new nint[16];
    private int _chunkCount;
    private uint _count = 1;      // entries made so far, index 0 reserved
    private uint _freeHead;       // 0 = empty
    private long _freeEntries;

    public uint Count => Volatile.Read(ref _count);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public HandleEntry* Get(uint index)
    {
        Debug.Assert(index < Count);
        return (HandleEntry*)Volatile.Read(ref _chunks)[index >> ChunkShift] + (index & (ChunkEntries - 1));
    }

    /// <summary>Pops up to <paramref name="dst"/>.Length free entries (making new ones as needed). Takes the table lock.
    /// Returns how many were popped (fewer only when <see cref="MaxEntries"/> is reached).</summary>
    public int Pop(Span<uint> dst)
    {
        lock (_lock)
        {
            int n = 0;
            while (n < dst.Length)
            {
                if (_freeHead != 0)
                {
                    uint i = _freeHead;
                    _freeHead = (uint)Get(i)->Link;
                    _freeEntries--;
                    dst[n++] = i;
                    continue;
                }
                if (_count >= MaxEntries) break;
                if ((_count & (ChunkEntries - 1)) == 0 || _chunkCount == 0) AddChunkLocked();
                dst[n++] = _count;
                Volatile.Write(ref _count, _count + 1);
            }
            return n;
        }
    }

    /// <summary>Returns entries to the free list. Their state words must already carry the bumped generation.
    /// Takes the table lock.</summary>
    public void Push(ReadOnlySpan<uint> entries)
    {
        lock (_lock)
        {
            foreach (uint i in entries)
            {
                Get(i)->Link = _freeHead;
                _freeHead = i;
                _freeEntries++;
            }
        }
    }

    private void AddChunkLocked()
    {
        Debug.Assert(_lock.IsHeldByCurrentThread, "caller holds the table lock");
        if (_chunkCount == _chunks.Length)
        {
            var bigger = new nint[_chunks.Length * 2];
            Array.Copy(_chunks, bigger, _chunks.Length);
            Volatile.Write(ref _chunks, bigger);
        }
        nint chunk = (nint)NativeMemory.AlignedAlloc((nuint)ChunkEntries * (nuint)sizeof(HandleEntry), 64);
        NativeMemory.Clear((void*)chunk, (nuint)ChunkEntries * (nuint)sizeof(HandleEntry));
        _chunks[_chunkCount++] = chunk;
    }

    /// <summary>True when <paramref name="entry"/> points into one of this table's chunks.</summary>
    public bool Owns(nint entry)
    {
        nint[] chunks = Volatile.Read(ref _chunks);
        int n = Volatile.Read(ref _chunkCount);
        for (int i = 0; i < n; i++)
        {
            nint c = chunks[i];
            if (entry >= c && entry < c + ChunkEntries * sizeof(HandleEntry)) return true;
        }
        return false;
    }

    public long MetadataBytes => (long)_chunkCount * ChunkEntries * sizeof(HandleEntry);

    public long FreeEntries { get { lock (_lock) return _freeEntries; } }

    public void Dispose()
    {
        lock (_lock)
        {
            for (int i = 0; i < _chunkCount; i++) NativeMemory.AlignedFree((void*)_chunks[i]);
            _chunkCount = 0;
        }
    }
}
