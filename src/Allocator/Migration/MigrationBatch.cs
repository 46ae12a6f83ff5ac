namespace Compaction.Allocator.Migration;

/// <summary>
/// One block of a <see cref="MigrationBatch"/>: what the caller fills in (entry, expected state word, source,
/// destination) and what the primitive writes (the result, the owner that isolated the block). One struct per block,
/// so that the migrator's walk over a batch touches one cache line per block (two at most), not six arrays.
/// </summary>
internal struct MigrationItem
{
    /// <summary>The block's handle index.</summary>
    public uint Index;
    /// <summary>Set by the primitive: Busy until the block is frozen (then Success), or why it failed.</summary>
    public MigrateResult Result;
    /// <summary>The state word the freeze CAS expects (read by the caller, racily; see the migration protocol).</summary>
    public long State;
    public nint Src;
    public nint Dst;
    /// <summary>The owner that isolated the block, if any (set and cleared by the primitive).</summary>
    public IMovableBlockOwner? Owner;
}

/// <summary>
/// Blocks to migrate together: one process-wide barrier serves the whole batch (native-layout.md, "Migration
/// protocol"). Filled by the caller with entry, expected state word, source and destination; the primitive fills
/// each item's <see cref="MigrationItem.Result"/>. Reused across batches; not thread-safe.
/// </summary>
internal sealed class MigrationBatch
{
    private MigrationItem[] _items = new MigrationItem[64];
    public int Count;
    /// <summary>Bytes copied by the last <see cref="Migrator.MigrateBatch"/> of this batch.</summary>
    public long BytesMoved;
    /// <summary>Process-wide barriers the last <see cref="Migrator.MigrateBatch"/> of this batch issued: one for all
    /// its blocks without an owner, plus one per owned block.</summary>
    public int Barriers;
    public bool InUse;                                                    // a nested MigrateEntry takes a fresh batch
    /// <summary>The batch moves movable blocks into unmovable memory for a long-term pin: each success ends with the
    /// entry's Movable bit cleared (the block is unmovable from then on).</summary>
    public bool Demote;
    internal readonly HashSet<long> PinnedEntries = [];

    /// <summary>Block <paramref name="i"/> (below <see cref="Count"/>), by reference.</summary>
    public ref MigrationItem this[int i] => ref _items[i];

    public void Clear()
    {
        // The owners are references: cleared so that a reused batch keeps no owner alive.
        Array.Clear(_items, 0, Count);
        Count = 0;
        BytesMoved = 0;
        Barriers = 0;
        Demote = false;
    }

    /// <summary>Makes room for <paramref name="n"/> more blocks, so that the next <paramref name="n"/> calls of
    /// <see cref="Add"/> allocate nothing. A caller that takes storage for a block before adding it (the compactor's
    /// destinations) calls it first: a managed allocation that fails then fails before any storage is taken. The
    /// array is replaced only once its larger copy exists, so a failure leaves the batch as it was.</summary>
    public void EnsureRoom(int n)
    {
        int need = Count + n;
        if (need <= _items.Length) return;
        Array.Resize(ref _items, Math.Max(need, Count * 2));
    }

    public void Add(uint index, long state, nint src, nint dst)
    {
        EnsureRoom(1);
        _items[Count++] = new MigrationItem { Index = index, State = state, Src = src, Dst = dst, Result = MigrateResult.Busy };
    }
}
