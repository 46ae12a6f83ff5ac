namespace Compaction.Allocator.Migration;

/// <summary>
/// Blocks to migrate together: one process-wide barrier serves the whole batch (native-layout.md, "Migration
/// protocol"). Filled by the caller with entry, expected state word, source and destination; the primitive fills
/// <see cref="Result"/>. Reused across batches; not thread-safe.
/// </summary>
internal sealed class MigrationBatch
{
    public uint[] Index = new uint[64];
    public long[] State = new long[64];
    public nint[] Src = new nint[64];
    public nint[] Dst = new nint[64];
    public MigrateResult[] Result = new MigrateResult[64];
    public IMovableBlockOwner?[] Owner = new IMovableBlockOwner?[64];   // the owner that isolated the block, if any
    public int Count;
    /// <summary>Bytes copied by the last <see cref="Migrator.MigrateBatch"/> of this batch.</summary>
    public long BytesMoved;
    public bool InUse;                                                    // a nested MigrateEntry takes a fresh batch
    /// <summary>The batch moves movable blocks into unmovable memory for a long-term pin: each success ends with the
    /// entry's Movable bit cleared (the block is unmovable from then on).</summary>
    public bool Demote;
    internal readonly HashSet<long> PinnedEntries = [];

    public void Clear() { Count = 0; BytesMoved = 0; Demote = false; }

    public void Add(uint index, long state, nint src, nint dst)
    {
        if (Count == Index.Length)
        {
            int n = Count * 2;
            Array.Resize(ref Index, n);
            Array.Resize(ref State, n);
            Array.Resize(ref Src, n);
            Array.Resize(ref Dst, n);
            Array.Resize(ref Result, n);
            Array.Resize(ref Owner, n);
        }
        Index[Count] = index;
        State[Count] = state;
        Src[Count] = src;
        Dst[Count] = dst;
        Result[Count] = MigrateResult.Busy;
        Owner[Count] = null;
        Count++;
    }
}
