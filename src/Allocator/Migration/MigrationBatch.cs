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

    /// <summary>Makes room for <paramref name="n"/> more blocks, so that the next <paramref name="n"/> calls of
    /// <see cref="Add"/> allocate nothing. A caller that takes storage for a block before adding it (the compactor's
    /// destinations) calls it first: a managed allocation that fails then fails before any storage is taken. Each
    /// array grows on its own, so a failure part way leaves every array at least <see cref="Count"/> long.</summary>
    public void EnsureRoom(int n)
    {
        int need = Count + n;
        if (need <= Owner.Length && need <= Index.Length && need <= State.Length && need <= Src.Length && need <= Dst.Length && need <= Result.Length) return;
        int size = Math.Max(need, Count * 2);
        if (Index.Length < need) Array.Resize(ref Index, size);
        if (State.Length < need) Array.Resize(ref State, size);
        if (Src.Length < need) Array.Resize(ref Src, size);
        if (Dst.Length < need) Array.Resize(ref Dst, size);
        if (Result.Length < need) Array.Resize(ref Result, size);
        if (Owner.Length < need) Array.Resize(ref Owner, size);
    }

    public void Add(uint index, long state, nint src, nint dst)
    {
        EnsureRoom(1);
        Index[Count] = index;
        State[Count] = state;
        Src[Count] = src;
        Dst[Count] = dst;
        Result[Count] = MigrateResult.Busy;
        Owner[Count] = null;
        Count++;
    }
}
