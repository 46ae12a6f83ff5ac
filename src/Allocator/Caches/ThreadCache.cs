using System.Runtime.CompilerServices;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Caches;

/// <summary>
/// A thread's cache for one heap: stacks of free slots per (kind, size class), free handle entries, and the frees it
/// batched (a freed slot goes back on its stack and reaches its slab only when the stack overflows). Like the kernel's
/// per-CPU lists, slots in here count as used in their slab and so hold references that make slab consolidation fail;
/// <see cref="ThreadCaches.Disable"/> switches every cache off and drains it.
/// </summary>
/// <remarks>
/// Ownership: only the owning thread pushes or pops, and only between setting <see cref="InUse"/> to 1 and back to 0
/// after reading the heap's disable counter. A drainer raises that counter, issues a process-wide barrier, waits for
/// InUse to be 0 and only then drains (native-layout.md, "Per-thread caches"). A dead thread's cache can be drained
/// at any time.
/// </remarks>
internal sealed class ThreadCache
{
    public const int EntryCapacity = 64;

    /// <summary>1 while the owner touches the cache; the Dekker flag of the drain protocol.</summary>
    public int InUse;
    public readonly Thread Owner;
    /// <summary>The heap's cache set this cache belongs to.</summary>
    public readonly ThreadCaches Set;
    public readonly nint[][] Slots;     // [kind * classes + class] -> stack
    public readonly int[] SlotCount;
    public readonly uint[] Entries = new uint[EntryCapacity];
    public int EntryCount;
    /// <summary>Bytes and blocks allocated minus freed by this thread; written by the owner only, summed racily.</summary>
    public long LiveBytes;
    public long LiveBlocks;

    public ThreadCache(ThreadCaches set, SizeClasses classes)
    {
        Set = set;
        Owner = Thread.CurrentThread;
        int n = classes.Count * 2;
        Slots = new nint[n][];
        SlotCount = new int[n];
        for (int i = 0; i < n; i++)
        {
            int size = classes.Size[i % classes.Count];
            Slots[i] = new nint[Math.Clamp(32 * 1024 / size, 4, 64)];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int StackIndex(BlockKind kind, int c, int classes) => (int)kind * classes + c;
}
