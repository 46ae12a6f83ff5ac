namespace Compaction.Allocator.Os;

// Test hooks of the OS layer: refusals the tests inject. Nothing in the product sets them.
internal sealed unsafe partial class ArenaMemory
{
    /// <summary>When set, the next commit fails as if the OS refused it.</summary>
    internal volatile bool FailNextCommit;

    /// <summary>When set, the next decommit or purge fails as if the OS refused it.</summary>
    internal volatile bool FailNextDecommit;
}
