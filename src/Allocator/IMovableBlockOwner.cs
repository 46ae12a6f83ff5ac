namespace Compaction.Allocator;

/// <summary>
/// Callbacks of a block's owner, consulted when the compactor moves the block (the kernel's movable_operations for
/// driver-owned pages). Register with <see cref="NativeHeap.SetMovableOwner"/>.
/// </summary>
/// <remarks>
/// Order of calls for one migration: <see cref="Isolate"/>; then, with the block frozen (no pin can start) and its
/// bytes already copied, <see cref="Migrate"/>; <see cref="Putback"/> whenever an isolated block ends up not moved.
/// Callbacks run on the compacting thread with no class, zone or table lock held, and while one runs its block is
/// the only one that thread holds frozen. They may use the heap (allocate, pin and free other blocks), but must not
/// pin, free or re-own the block being migrated (that would wait for the migration itself; it throws
/// InvalidOperationException); a compaction they would start (an explicit one, a step, a direct one from a failed
/// allocation) is skipped. The owner that answered <see cref="Isolate"/> is the one that gets <see cref="Migrate"/> or
/// <see cref="Putback"/>; re-owning the block meanwhile voids the attempt (that owner gets Putback).
/// An exception from <see cref="Isolate"/> or <see cref="Migrate"/> aborts that block's migration and leaves the block
/// intact at its old address.
/// A compactor on another thread that looked the owner up just before its registration ended (the block freed,
/// re-owned, unregistered or long-term pinned) may still call <see cref="Isolate"/> and then <see cref="Putback"/>
/// after that call returned; never <see cref="Migrate"/>, which needs the block frozen with this owner still
/// registered. An owner that tears down its state on free should answer such a late call with false.
/// </remarks>
public interface IMovableBlockOwner
{
    /// <summary>The compactor wants to move <paramref name="handle"/>. Return false to refuse this time (the block is
    /// treated as busy and may be tried again later).</summary>
    bool Isolate(BlockHandle handle);

    /// <summary>The block's bytes were copied from <paramref name="oldAddress"/> to <paramref name="newAddress"/>.
    /// Return <see cref="OwnerMigrateResult.Success"/> to complete the move (the handle then names the new address),
    /// or <see cref="OwnerMigrateResult.TryAgain"/> to abort it for now (retried on a later pass).</summary>
    OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress);

    /// <summary>An isolated block was not moved; it is still at its old address.</summary>
    void Putback(BlockHandle handle);
}
