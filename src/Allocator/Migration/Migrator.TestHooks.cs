namespace Compaction.Allocator.Migration;

// Test hooks of the migration primitive. Nothing in the product sets them.
internal sealed unsafe partial class Migrator
{
    /// <summary>Called on this thread inside <see cref="MigrateBatch"/> with the batch's blocks frozen, just before
    /// the pin-slot snapshot: a test makes it throw to prove that no block stays frozen.</summary>
    [ThreadStatic] internal static Action? BeforePinSnapshot;
}
