using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Compaction.Allocator.Slabs;

/// <summary>
/// The size classes of the slab allocator: 16 B apart up to 128 B, then eight classes per doubling (at most 12.5%
/// apart), rounded to 16 B, up to the slab threshold. Each class picks the slab length (1 to 16 pages) that wastes
/// the least, counting 4 bytes of reverse map per slot (native-layout.md, "Slabs").
/// </summary>
internal sealed class SizeClasses
{
    public const int ReverseMapBytesPerSlot = sizeof(int);
    public readonly int[] Size;
    public readonly int[] PagesPerSlab;
    public readonly int[] SlotsPerSlab;
    public readonly int[] ReverseMapOffset;   // bytes from the slab start to its int[slots] of handle indices
    public readonly ulong[] Reciprocal;       // floor(2^64 / size) + 1: slot = high64(offset * Reciprocal)
    private readonly byte[] _classOf16;       // (size + 15) / 16 -> class index
    public readonly int Threshold;

    public SizeClasses(int threshold, int pageSize)
    {
        threshold = (threshold + 15) & ~15;   // every class is a multiple of 16 B, so slots stay 16-byte aligned
        Threshold = threshold;
        var sizes = new List<int>();
        for (int s = 16; s <= 128; s += 16) sizes.Add(s);
        for (int baseSize = 128; baseSize < threshold; baseSize *= 2)
            for (int step = 1; step <= 8; step++)
            {
                int s = (baseSize + baseSize * step / 8 + 15) & ~15;
                if (s > threshold) break;
                if (s > sizes[^1]) sizes.Add(s);
            }
        if (sizes[^1] < threshold) sizes.Add(threshold);
        Size = sizes.ToArray();
        int n = Size.Length;
        PagesPerSlab = new int[n];
        SlotsPerSlab = new int[n];
        ReverseMapOffset = new int[n];
        Reciprocal = new ulong[n];
        for (int c = 0; c < n; c++)
        {
            (PagesPerSlab[c], SlotsPerSlab[c]) = ChooseSlab(Size[c], pageSize);
            ReverseMapOffset[c] = PagesPerSlab[c] * pageSize - SlotsPerSlab[c] * ReverseMapBytesPerSlot;
            Reciprocal[c] = ulong.MaxValue / (ulong)Size[c] + 1;
        }
        _classOf16 = new byte[threshold / 16 + 1];
        for (int i = 0, c = 0; i < _classOf16.Length; i++)
        {
            while (Size[c] < i * 16) c++;
            _classOf16[i] = (byte)c;
        }
    }

    public int Count => Size.Length;

    /// <summary>The table <see cref="ClassOf(long)"/> reads: entry (size + 15) / 16 is the class of a request of size bytes.</summary>
    public byte[] ClassTable => _classOf16;

    /// <summary>Class index for a request of <paramref name="size"/> bytes (1 &lt;= size &lt;= threshold); one table load.</summary>
    /// No bounds check: the size is at most the threshold, and the table has an entry for every 16 bytes up to it.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int ClassOf(long size)
    {
        Debug.Assert(size >= 1 && size <= Threshold);
        return ClassOf(_classOf16, size);
    }

    /// <summary><see cref="ClassOf(long)"/> on a <see cref="ClassTable"/> the caller keeps (one load nearer a fast path).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ClassOf(byte[] table, long size) =>
        Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(table), (int)((size + 15) >> 4));

    /// <summary>Slot index of byte offset <paramref name="offset"/> in a slab of class <paramref name="c"/>: one
    /// multiply instead of a division, exact for every offset below 2^32 (slabs are at most 16 pages).</summary>
    public int SlotOf(int c, int offset) => (int)Math.BigMul((ulong)(uint)offset, Reciprocal[c], out _);

    private static (int pages, int slots) ChooseSlab(int size, int pageSize)
    {
        int maxPages = Math.Max(1, Math.Min(16, 65536 * 4 / pageSize));
        int bestPages = 0, bestSlots = 0;
        double bestWaste = double.MaxValue;
        for (int pages = 1; pages <= 16; pages++)
        {
            long bytes = (long)pages * pageSize;
            int slots = (int)Math.Min(bytes / (size + ReverseMapBytesPerSlot), ushort.MaxValue);
            if (slots == 0) continue;
            if (pages > maxPages && bestSlots > 0) break;
            double waste = (bytes - (long)slots * size) / (double)bytes;  // reverse map counted as waste too
            if (waste + 0.005 < bestWaste) { bestWaste = waste; bestPages = pages; bestSlots = slots; }
        }
        return (bestPages, bestSlots);
    }
}
