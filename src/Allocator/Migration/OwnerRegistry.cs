using System.Collections.Concurrent;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Migration;

/// <summary>
/// The movable owners of a heap's blocks (the kernel's movable_operations for driver-owned pages) and the calls the
/// migration primitive makes into them (native-layout.md, "Movable owners").
/// </summary>
/// <remarks>
/// An owner is registered for one block, keyed by the block's entry index <b>and generation</b>: a later block that
/// reuses the entry has another key, so an owner is never asked about a block it was not registered for.
/// The entry's <see cref="EntryState.HasOwner"/> flag and the dictionary change together under <see cref="_lock"/>
/// (registrations are rare); the migration side reads the dictionary without the lock — a ConcurrentDictionary read
/// is safe, and the freeze re-checks that the owner which isolated the block is still the one registered.
/// Lock ordering: <see cref="_lock"/> is a leaf; it is never held while waiting for a frozen entry.
/// </remarks>
internal sealed unsafe class OwnerRegistry
{
    private readonly ConcurrentDictionary<ulong, IMovableBlockOwner> _owners = new();
    private readonly Lock _lock = new();

    /// <summary>The handle the heap issued for entry <paramref name="index"/> in state <paramref name="state"/> (its
    /// generation and index): what an owner is called with.</summary>
    private static BlockHandle HandleOf(uint index, long state) => new(HandleBits.Encode(EntryState.Generation(state), index));

    private static ulong Key(uint index, uint generation) => ((ulong)generation << 32) | index;
    private static ulong Key(uint index, long state) => Key(index, EntryState.Generation(state));

    /// <summary>Registers <paramref name="owner"/> for the live movable block <paramref name="handle"/> names, whose
    /// entry is <paramref name="e"/> and index <paramref name="index"/>; null unregisters. Takes the registry lock,
    /// released while the block is frozen by a migration (whose owner callback might itself register owners).</summary>
    /// <exception cref="InvalidBlockHandleException">The handle is stale.</exception>
    /// <exception cref="InvalidOperationException">The block is unmovable, or this thread is migrating it.</exception>
    public void Set(BlockHandle handle, uint index, HandleEntry* e, IMovableBlockOwner? owner)
    {
        FrozenWait wait = default;
        ulong written = 0;   // the key an earlier round registered the owner under, if any
        while (true)
        {
            lock (_lock)
            {
                while (true)
                {
                    long s = Volatile.Read(ref e->State);
                    if (!HandleChecks.IsLive(handle, s))
                    {
                        // Freed meanwhile: take back a registration an earlier round may have written (Free, which
                        // saw no flag, did not), then report the stale handle.
                        if (written != 0) _owners.TryRemove(new KeyValuePair<ulong, IMovableBlockOwner>(written, owner!));
                        HandleChecks.CheckLive(handle, s);
                    }
                    if ((s & EntryState.Movable) == 0)
                    {
                        // Nothing to unregister (a long-term pin may have made the block unmovable since it was owned).
                        if (owner == null) return;
                        throw new InvalidOperationException($"{handle} is unmovable; only movable blocks have movable owners.");
                    }
                    if ((s & EntryState.Frozen) != 0) break;   // wait outside the lock
                    ulong key = Key(index, s);
                    // Registering: the dictionary first, so a migration that sees HasOwner finds the owner.
                    // Unregistering: the flag first, so a migration that finds no owner has seen no flag or fails.
                    if (owner != null) _owners[written = key] = owner;
                    long updated = owner != null ? s | EntryState.HasOwner : s & ~EntryState.HasOwner;
                    if (Interlocked.CompareExchange(ref e->State, updated, s) != s) continue;   // a pin or a free changed it
                    if (owner == null) _owners.TryRemove(key, out _);
                    return;
                }
            }
            FrozenByThisThread.ThrowIfFrozenHere(e);
            try
            {
                wait.Once(e);
            }
            catch
            {
                // Interrupted while waiting (Thread.Interrupt): a registration an earlier round wrote has no flag, so no
                // Free would ever take it back; it goes now, and nothing of this call stays.
                if (written != 0) lock (_lock) _owners.TryRemove(new KeyValuePair<ulong, IMovableBlockOwner>(written, owner!));
                throw;
            }
        }
    }

    /// <summary>Called by Free after its CAS freed entry <paramref name="index"/> whose last live state was
    /// <paramref name="liveState"/> (with HasOwner).</summary>
    public void Forget(uint index, long liveState) => _owners.TryRemove(Key(index, liveState), out _);

    /// <summary>True when <paramref name="owner"/> is still the owner registered for (index, generation of
    /// <paramref name="state"/>). Lock-free read.</summary>
    public bool IsStillOwner(uint index, long state, IMovableBlockOwner owner) =>
        _owners.TryGetValue(Key(index, state), out IMovableBlockOwner? now) && now == owner;

    /// <summary>Asks block <paramref name="i"/>'s owner to isolate it, remembering which owner answered: the same
    /// instance gets the migrate and putback calls (a re-own meanwhile voids the attempt at the freeze). Returns false
    /// when the owner refused (OwnerRetry) or threw (OwnerFailed), or when no owner is registered any more (Busy).</summary>
    public bool Isolate(MigrationBatch batch, int i)
    {
        uint index = batch[i].Index;
        if (!_owners.TryGetValue(Key(index, batch[i].State), out IMovableBlockOwner? owner)) { batch[i].Result = MigrateResult.Busy; return false; }
        try
        {
            if (owner.Isolate(HandleOf(index, batch[i].State)))
            {
                batch[i].Owner = owner;
                return true;
            }
            batch[i].Result = MigrateResult.OwnerRetry;   // "not now", as a migrate callback's TryAgain
        }
        catch (Exception)
        {
            batch[i].Result = MigrateResult.OwnerFailed;
        }
        return false;
    }

    /// <summary>Runs the isolating owner's migrate callback with block <paramref name="i"/> (entry
    /// <paramref name="e"/>) frozen and copied. On refusal or exception the block is unfrozen in place through
    /// <paramref name="migrator"/> (and put back); returns false.</summary>
    public static bool Migrate(MigrationBatch batch, int i, HandleEntry* e, Migrator migrator)
    {
        uint index = batch[i].Index;
        IMovableBlockOwner owner = batch[i].Owner!;
        OwnerMigrateResult answer;
        HandleEntry* outer = FrozenByThisThread.Enter(e);
        try
        {
            answer = owner.Migrate(HandleOf(index, batch[i].State), batch[i].Src, batch[i].Dst);
        }
        catch (Exception)
        {
            FrozenByThisThread.Exit(outer);
            migrator.Unfreeze(batch, i, MigrateResult.OwnerFailed);
            return false;
        }
        FrozenByThisThread.Exit(outer);
        if (answer == OwnerMigrateResult.Success) return true;
        migrator.Unfreeze(batch, i, MigrateResult.OwnerRetry);
        return false;
    }

    /// <summary>Tells the owner that isolated block <paramref name="i"/> (if any) that it was not moved.</summary>
    public static void Putback(MigrationBatch batch, int i)
    {
        IMovableBlockOwner? owner = batch[i].Owner;
        if (owner == null) return;
        batch[i].Owner = null;
        try
        {
            owner.Putback(HandleOf(batch[i].Index, batch[i].State));
        }
        catch (Exception)
        {
            // Nothing to undo: the block is intact at its old address whatever the owner's putback did.
        }
    }
}
