namespace Compaction.Allocator.Handles;

// Test hooks of the heap's share of the handle table. Nothing in the product sets them.
internal sealed unsafe partial class HandleTable
{
    /// <summary>When set, every chunk this table takes is a new one, committed through the heap's OS layer, even when
    /// the store has given-back chunks free: chunks other heaps (other tests) give back would otherwise decide
    /// whether a growth reaches the commit a test means to refuse. Read under the table lock.</summary>
    internal volatile bool NewChunksOnly;
}
