namespace Compaction.Allocator;

/// <summary>
/// Names a block of a <see cref="NativeHeap"/>. A handle stays valid while the block is allocated, even when the
/// compactor relocates the block. It carries an index into the process-wide handle table, whose chunks each belong to
/// one heap at a time, and the generation of the entry when the block was allocated: a stale (freed), forged or
/// foreign handle is detected and rejected, however many heaps live or have lived.
/// </summary>
public readonly struct BlockHandle : IEquatable<BlockHandle>
{
    /// <summary>Rebuilds a handle from <see cref="Value"/> (for example after it went through native code).</summary>
    public BlockHandle(ulong value) => Value = value;

    /// <summary>The 64-bit value: bits 0-31 index, bits 32-63 generation.</summary>
    public ulong Value { get; }

    /// <summary>True for <c>default(BlockHandle)</c>, which no heap ever issues.</summary>
    public bool IsNull => Value == 0;

    /// <inheritdoc/>
    public bool Equals(BlockHandle other) => Value == other.Value;
    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is BlockHandle h && h.Value == Value;
    /// <inheritdoc/>
    public override int GetHashCode() => Value.GetHashCode();
    /// <inheritdoc/>
    public override string ToString() => $"BlockHandle(0x{Value:x16})";
    /// <summary>Equality of values.</summary>
    public static bool operator ==(BlockHandle a, BlockHandle b) => a.Value == b.Value;
    /// <summary>Inequality of values.</summary>
    public static bool operator !=(BlockHandle a, BlockHandle b) => a.Value != b.Value;
}
