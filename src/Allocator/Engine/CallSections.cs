using Compaction.Allocator.Caches;
using Compaction.Allocator.Os;

namespace Compaction.Allocator.Engine;

/// <summary>A call section for an entry point that touches the arena outside the allocation and free fast paths
/// (<see cref="ThreadCaches.EnterCall"/>): <c>using CallSection _ = new(caches);</c>. A Dispose waits for it
/// (native-layout.md, "Dispose and the closing protocol").</summary>
internal readonly ref struct CallSection
{
    private readonly ThreadCaches _caches;
    private readonly ThreadCache? _tc;

    /// <exception cref="ObjectDisposedException">The heap was disposed (or is being disposed, from inside another
    /// call).</exception>
    public CallSection(ThreadCaches caches)
    {
        _caches = caches;
        _tc = caches.Current();
        caches.EnterCall(_tc);
    }

    /// <summary>Leaves the section.</summary>
    public void Dispose() => _caches.ExitCall(_tc);
}

/// <summary>The call section of an allocation made for a caller (the slow allocation paths): for its length the
/// thread's commits respect the soft limit (<see cref="ArenaMemory.SoftLimitApplies"/>, restored at the end; a
/// compaction, a long-term pin's move and the reclaimer never set it).</summary>
internal readonly ref struct AllocationSection
{
    private readonly ThreadCaches _caches;
    private readonly ThreadCache? _tc;
    private readonly bool _softLimitBefore;

    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public AllocationSection(ThreadCaches caches, ThreadCache? tc)
    {
        _caches = caches;
        _tc = tc;
        caches.EnterCall(tc);   // first: when it throws there is nothing to restore
        _softLimitBefore = ArenaMemory.SoftLimitApplies;
        ArenaMemory.SoftLimitApplies = true;
    }

    /// <summary>Restores the soft-limit flag and leaves the section.</summary>
    public void Dispose()
    {
        ArenaMemory.SoftLimitApplies = _softLimitBefore;
        _caches.ExitCall(_tc);
    }
}
