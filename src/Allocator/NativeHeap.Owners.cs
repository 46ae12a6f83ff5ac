using System.Collections.Concurrent;

namespace Compaction.Allocator;

// Movable owners (seed 003): the registry and the calls the migration primitive makes into it.
public sealed unsafe partial class NativeHeap
{
    private readonly ConcurrentDictionary<uint, IMovableBlockOwner> _owners = new();
    private long _ownerCallbackFailures;

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
            CheckLive(handle, s);
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

    private bool OwnerIsolate(uint index, long state, out MigrateResult result)
    {
        result = MigrateResult.Busy;
        if (!_owners.TryGetValue(index, out IMovableBlockOwner? owner)) return true;
        try
        {
            if (owner.Isolate(HandleOf(index, state))) return true;
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _ownerCallbackFailures);
            result = MigrateResult.OwnerFailed;
        }
        return false;
    }

    /// <summary>Runs the owner's migrate callback with the block frozen and copied. On refusal or exception the
    /// block is unfrozen in place (and put back); returns false.</summary>
    private bool OwnerMigrate(uint index, MigrationBatch batch, int i)
    {
        if (!_owners.TryGetValue(index, out IMovableBlockOwner? owner)) return true;
        HandleEntry* e = Handles.Get(index);
        OwnerMigrateResult answer;
        t_migratingEntry = e;
        try
        {
            answer = owner.Migrate(HandleOf(index, batch.State[i]), batch.Src[i], batch.Dst[i]);
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _ownerCallbackFailures);
            t_migratingEntry = null;
            Unfreeze(batch, i, MigrateResult.OwnerFailed);
            return false;
        }
        t_migratingEntry = null;
        if (answer == OwnerMigrateResult.Success) return true;
        Unfreeze(batch, i, MigrateResult.OwnerRetry);
        return false;
    }

    private void OwnerPutback(uint index, long state)
    {
        if ((state & EntryState.HasOwner) == 0 || !_owners.TryGetValue(index, out IMovableBlockOwner? owner)) return;
        try
        {
            owner.Putback(HandleOf(index, state));
        }
        catch (Exception)
        {
            Interlocked.Increment(ref _ownerCallbackFailures);
        }
    }
}
