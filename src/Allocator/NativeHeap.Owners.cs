using System.Collections.Concurrent;

namespace Compaction.Allocator;

// Movable owners (seed 003): the registry and the calls the migration primitive makes into it.
public sealed unsafe partial class NativeHeap
{
    private readonly ConcurrentDictionary<uint, IMovableBlockOwner> _owners = new();

    /// <summary>
    /// Registers <paramref name="owner"/> for a movable block: the compactor will ask it before moving the block and
    /// tell it the new address. Pass null to unregister. The registration ends when the block is freed.
    /// </summary>
    /// <exception cref="InvalidOperationException">The block is unmovable.</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void SetMovableOwner(BlockHandle handle, IMovableBlockOwner? owner)
    {
        HandleEntry* e = Locate(handle);
        uint index = HandleBits.Index(handle.Value);
        SpinWait spin = default;
        while (true)
        {
            long s = Volatile.Read(ref e->State);
            if (!IsLiveState(handle, s))
            {
                // Freed meanwhile: take back a registration this loop may have written (Free, which saw no flag,
                // did not), then report the stale handle.
                if (owner != null) _owners.TryRemove(new KeyValuePair<uint, IMovableBlockOwner>(index, owner));
                CheckLive(handle, s);
            }
            if ((s & EntryState.Movable) == 0) throw new InvalidOperationException($"{handle} is unmovable; only movable blocks have movable owners.");
            if ((s & EntryState.Frozen) != 0) { ThrowIfMigratingOnThisThread(e); spin.SpinOnce(); continue; }
            // The dictionary changes first: a migration that sees HasOwner always finds the owner, and one that sees
            // no flag never calls it.
            if (owner != null) _owners[index] = owner;
            long updated = owner != null ? s | EntryState.HasOwner : s & ~EntryState.HasOwner;
            if (Interlocked.CompareExchange(ref e->State, updated, s) == s) break;
        }
        if (owner == null) _owners.TryRemove(index, out _);
    }

    /// <summary>Called by Free after its CAS made the entry free.</summary>
    private void ForgetOwner(uint index) => _owners.TryRemove(index, out _);

    private BlockHandle HandleOf(uint index, long state) => new(HandleBits.Encode(_tag, EntryState.Generation(state), index));

    private static bool IsLiveState(BlockHandle handle, long s) =>
        (s & EntryState.Allocated) != 0 && (EntryState.Generation(s) & HandleBits.GenerationMask) == HandleBits.Generation(handle.Value);

    /// <summary>Asks the block's owner to isolate it, remembering which owner answered: the same instance gets the
    /// migrate and putback calls (a re-own meanwhile voids the attempt at the freeze). Returns false when the owner
    /// refused or threw (Result says which) or when the owner is gone (Busy).</summary>
    private bool OwnerIsolate(MigrationBatch batch, int i)
    {
        uint index = batch.Index[i];
        if (!_owners.TryGetValue(index, out IMovableBlockOwner? owner)) { batch.Result[i] = MigrateResult.Busy; return false; }
        try
        {
            if (owner.Isolate(HandleOf(index, batch.State[i])))
            {
                batch.Owner[i] = owner;
                return true;
            }
            batch.Result[i] = MigrateResult.Busy;
        }
        catch (Exception)
        {
            batch.Result[i] = MigrateResult.OwnerFailed;   // counted as MigrateOwnerFailed
        }
        return false;
    }

    /// <summary>Runs the isolating owner's migrate callback with the block frozen and copied. On refusal or exception
    /// the block is unfrozen in place (and put back); returns false.</summary>
    private bool OwnerMigrate(MigrationBatch batch, int i)
    {
        uint index = batch.Index[i];
        IMovableBlockOwner owner = batch.Owner[i]!;
        HandleEntry* e = Handles.Get(index);
        OwnerMigrateResult answer;
        t_migratingEntry = e;
        try
        {
            answer = owner.Migrate(HandleOf(index, batch.State[i]), batch.Src[i], batch.Dst[i]);
        }
        catch (Exception)
        {
            t_migratingEntry = null;
            Unfreeze(batch, i, MigrateResult.OwnerFailed);
            return false;
        }
        t_migratingEntry = null;
        if (answer == OwnerMigrateResult.Success) return true;
        Unfreeze(batch, i, MigrateResult.OwnerRetry);
        return false;
    }

    /// <summary>Tells the owner that isolated block <paramref name="i"/> (if any) that it was not moved.</summary>
    private void OwnerPutback(MigrationBatch batch, int i)
    {
        IMovableBlockOwner? owner = batch.Owner[i];
        if (owner == null) return;
        batch.Owner[i] = null;
        try
        {
            owner.Putback(HandleOf(batch.Index[i], batch.State[i]));
        }
        catch (Exception)
        {
            // Nothing to undo: the block is intact at its old address whatever the owner's putback did.
        }
    }
}
