namespace Compaction.Allocator.Compaction;

// Test hooks of the compactor. Nothing in the product reads them.
internal sealed unsafe partial class Compactor
{
    /// <summary>The deferral state (considered, defer shift, order failed).</summary>
    public (int considered, int shift, int orderFailed) Deferral => _deferral.State;
}
