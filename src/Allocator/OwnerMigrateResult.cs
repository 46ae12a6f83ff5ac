namespace Compaction.Allocator;

/// <summary>An owner's answer to <see cref="IMovableBlockOwner.Migrate"/> (the kernel's 0 and -EAGAIN).</summary>
public enum OwnerMigrateResult
{
    /// <summary>Complete the move.</summary>
    Success,
    /// <summary>Not now: keep the old place; the compactor retries on a later pass.</summary>
    TryAgain,
}
