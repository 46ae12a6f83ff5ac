using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Compaction.Allocator.Slabs;

/// <summary>
/// The size classes of the slab allocator: 16 B apart up to 1 KiB, then thirty-two classes per doubling (at most 3.1%
/// apart, about 1% of a block lost to rounding on average), rounded to 16 B, up to the slab threshold. Each class's slab is a whole buddy block of 1 to 16 pages that wastes
/// least (counting 4 bytes of reverse map per slot), or for the few large classes no buddy block fits, the exact
/// length that does (native-layout.md, "Slabs").
/// </summary>
internal sealed class SizeClasses
{
    public const int ReverseMapBytesPerSlot = sizeof(int);
    /// <summary>Classes per doubling above 128 B (wherever 16 B steps are coarser than this: above 1 KiB). A 64 B-1 KiB
    /// mix loses 1.4% to rounding and a 1-4 KiB mix 1.0% (with sixteen: 2.2% and 2.1%; with eight: 4.2%), which is
    /// most of what a heap of such blocks holds above its live bytes besides the handle table. The price is more bins,
    /// each capped in bytes, and more partly used slabs: at most 224 classes (a 32 KiB threshold), so a class index
    /// still fits the byte of <see cref="ClassTable"/>.</summary>
    public const int ClassesPerDoubling = 32;
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
            for (int step = 1; step <= ClassesPerDoubling; step++)
            {
                int s = (baseSize + baseSize * step / ClassesPerDoubling + 15) & ~15;
                if (s > threshold) break;
                if (s > sizes[^1]) sizes.Add(s);
            }
        if (sizes[^1] < threshold) sizes.Add(threshold);
        Size = sizes.ToArray();
        int n = Size.Length;
        Debug.Assert(n <= byte.MaxValue + 1, "a class index fits the byte of the class table");
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

    /// <summary>
    /// The slab length of a class. A slab is a whole buddy block (1, 2, 4, 8 or 16 pages) whenever one wastes at most
    /// <see cref="BuddyBlockWasteLimit"/> of its bytes: an exact length of, say, 10 pages takes a 16-page block and hands
    /// a 2- and a 4-page tail back to the free lists, which nothing may ever ask for again (the slabs of one class
    /// all want 10), so a heap of 512 B blocks would keep 37% of its slab pages free. Only the large classes, where
    /// no buddy block fits well (16 KiB slots with their reverse-map words fit 3 to a 16-page block), take the exact
    /// length that wastes least, and their tails go back to the buddy lists for the smaller classes' slabs.
    /// </summary>
    private static (int pages, int slots) ChooseSlab(int size, int pageSize)
    {
        int maxPages = Math.Max(1, Math.Min(16, 65536 * 4 / pageSize));
        (int pages, int slots, double waste) buddy = Best(size, pageSize, maxPages, powersOfTwoOnly: true);
        (int pages, int slots, double waste) exact = Best(size, pageSize, maxPages, powersOfTwoOnly: false);
        // A whole buddy block when it wastes little, or hardly more than any length would (the 32 B class loses 11% to
        // its reverse-map words whatever the slab's length).
        if (buddy.slots > 0 && (buddy.waste <= BuddyBlockWasteLimit || buddy.waste <= exact.waste + 0.02)) return (buddy.pages, buddy.slots);
        return (exact.pages, exact.slots);
    }

    /// <summary>Share of a slab's bytes that may go unused (slot rounding and the reverse map) before a class gives up
    /// whole buddy blocks for an exact length (unless the exact length would waste within two points as much).</summary>
    public const double BuddyBlockWasteLimit = 0.04;

    /// <summary>The length of 1 to 16 pages (powers of two only, or any) that wastes least for slots of
    /// <paramref name="size"/> bytes; a longer slab must save half a percent to be preferred. Lengths above
    /// <paramref name="maxPages"/> are tried only while none fits a slot.</summary>
    private static (int pages, int slots, double waste) Best(int size, int pageSize, int maxPages, bool powersOfTwoOnly)
    {
        int bestPages = 0, bestSlots = 0;
        double bestWaste = double.MaxValue;
        for (int pages = 1; pages <= 16; pages++)
        {
            if (powersOfTwoOnly && (pages & (pages - 1)) != 0) continue;
            long bytes = (long)pages * pageSize;
            int slots = (int)Math.Min(bytes / (size + ReverseMapBytesPerSlot), ushort.MaxValue);
            if (slots == 0) continue;
            if (pages > maxPages && bestSlots > 0) break;
            double waste = (bytes - (long)slots * size) / (double)bytes;  // reverse map counted as waste too
            if (waste + 0.005 < bestWaste) { bestWaste = waste; bestPages = pages; bestSlots = slots; }
        }
        return (bestPages, bestSlots, bestWaste);
    }
}
