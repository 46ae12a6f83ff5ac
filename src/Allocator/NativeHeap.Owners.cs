using Compaction.Allocator.Layout;

namespace Compaction.Allocator;

// Movable owners: registration at the public boundary; the registry and its callbacks live in the migration layer.
public sealed unsafe partial class NativeHeap
{
    /// <summary>
    /// Registers <paramref name="owner"/> for a movable block: the compactor will ask it before moving the block and
    /// tell it the new address. Pass null to unregister. The registration ends when the block is freed; an owner is
    /// only ever called with the handle of the block it was registered for.
    /// </summary>
    /// <exception cref="InvalidOperationException">The block is unmovable, or this thread is migrating it (a call from
    /// its own owner's callback).</exception>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void SetMovableOwner(BlockHandle handle, IMovableBlockOwner? owner)
    {
        HandleEntry* e = Locate(handle);
        using Section _ = new(_caches);
        _migrator.Owners.Set(handle, HandleBits.Index(handle.Value), e, owner);
    }
}
