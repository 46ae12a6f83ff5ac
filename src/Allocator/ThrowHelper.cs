using System.Diagnostics.CodeAnalysis;

namespace Compaction.Allocator;

/// <summary>Throws out of line so that hot paths stay small.</summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void InvalidHandle(BlockHandle h, InvalidHandleReason reason) => throw new InvalidBlockHandleException(h, reason);

    [DoesNotReturn]
    public static void Disposed() => throw new ObjectDisposedException(nameof(NativeHeap));

    [DoesNotReturn]
    public static void BadSize(long size) => throw new ArgumentOutOfRangeException(nameof(size), size,
        "A block's size must be at least 1 byte and at most the largest contiguous run the arena can hold.");

    [DoesNotReturn]
    public static void BadKind(BlockKind kind) => throw new ArgumentOutOfRangeException(nameof(kind), kind, "The kind must be BlockKind.Movable or BlockKind.Unmovable.");

    [DoesNotReturn]
    public static void OutOfMemory(long size, BlockKind kind) => throw new OutOfMemoryException(
        $"The arena cannot serve a {kind} block of {size} bytes.");

    [DoesNotReturn]
    public static void Pinned(BlockHandle h) => throw new InvalidOperationException($"{h} is pinned; release its pins before freeing it.");

    [DoesNotReturn]
    public static void PinReleased() => throw new InvalidOperationException("This pin was already released (unbalanced unpin).");

    [DoesNotReturn]
    public static void NotUnmovable(BlockHandle h) => throw new InvalidOperationException(
        $"{h} is a movable block: it has no stable address; pin it to reach its bytes.");

    [DoesNotReturn]
    public static void TooLargeForSpan(long size) => throw new InvalidOperationException(
        $"The block is {size} bytes, more than a Span<byte> can cover; use Pointer and Length.");
}
