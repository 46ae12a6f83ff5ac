using System.Diagnostics;
using System.Runtime.Intrinsics.X86;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;

namespace Compaction.Allocator.Slabs;

/// <summary>
/// Size-class slabs for one <see cref="BlockKind"/> (zsmalloc/mimalloc style). A slab is a run of 1 to 16 pages
/// holding equal slots; its first page descriptor is the slab's metadata (native-layout.md, "Slabs"). Slabs of a
/// class sit on fullness-group lists; allocation takes from the fullest non-full slab, so that nearly empty slabs
/// drain and can be freed (and so that the compactor has few sources to empty).
/// </summary>
/// <remarks>
/// Lock ordering: a class's <see cref="SlabClass.Lock"/> is taken before a zone lock (to carve a new slab or free an
/// empty one) and never while another class lock is held: no path, the compactor's included, holds two class locks.
/// Every method ending in <c>Locked</c>, and <see cref="Regroup"/>, requires the caller to hold the class lock (asserted
/// in debug builds).
/// </remarks>
internal sealed unsafe class SlabAllocator
{
    /// <summary>Fullness groups: 0 full, 1 at least 3/4, 2 at least 1/2, 3 at least 1/4, 4 above 0, 5 empty.</summary>
    public const int Groups = 6;
    public const int FullGroup = 0;
    public const int EmptyGroup = 5;
    /// <summary>Empty slabs a class keeps instead of freeing them at once (mimalloc keeps a few; avoids churn).</summary>
    public const int RetainedEmptySlabs = 1;

    public readonly BlockKind Kind;
    public readonly SizeClasses Classes;
    public readonly SlabClass[] Class;
    private readonly PageAllocator _pages;
    private readonly PageMap _map;
    private readonly FreePoison _poison;

    public SlabAllocator(PageAllocator pages, BlockKind kind, SizeClasses classes)
    {
        _pages = pages;
        _poison = pages.Poison;
        Kind = kind;
        Classes = classes;
        _map = pages.Map;
        Class = new SlabClass[classes.Count];
        for (int c = 0; c < Class.Length; c++) Class[c] = new SlabClass(c);
    }

    [Conditional("DEBUG")]
    private static void AssertLocked(SlabClass cls) => Debug.Assert(cls.Lock.IsHeldByCurrentThread, "caller holds the class lock");

    public static int GroupOf(int used, int capacity)
    {
        if (used == capacity) return FullGroup;
        if (used == 0) return EmptyGroup;
        return 4 - used * 4 / capacity;
    }

    /// <summary>Hands out up to <paramref name="max"/> slots of class <paramref name="c"/> into <paramref name="dst"/>,
    /// fullest slab first, carving new slabs as needed. Takes the class lock. Returns how many were handed out
    /// (fewer only when the arena is out of memory).</summary>
    public int AllocateSlots(int c, Span<nint> dst, int max)
    {
        SlabClass cls = Class[c];
        lock (cls.Lock)
        {
            int n = 0;
            while (n < max)
            {
                int head = FindSlabLocked(cls, excludeHead: -1);
                if (head < 0)
                {
                    head = CarveSlabLocked(cls);
                    if (head < 0) break;
                }
                n += TakeSlotsLocked(cls, head, dst.Slice(n), max - n);
            }
            return n;
        }
    }

    /// <summary>The least-full non-empty slab of the class (zsmalloc's compaction source), or -1.</summary>
    public int FindLeastFullLocked(SlabClass cls, HashSet<int> exclude)
    {
        AssertLocked(cls);
        for (int g = Groups - 2; g >= 1; g--)
            for (int p = cls.GroupHeads[g]; p >= 0; p = _map.Page(p).Next)
                if (!exclude.Contains(p)) return p;
        return -1;
    }

    /// <summary>zs_can_compact: pages that consolidation could free in the class,
    /// <c>(slots in all slabs - used slots) / slots per slab * pages per slab</c>. Caller holds the class lock.</summary>
    public long CanCompactLocked(SlabClass cls)
    {
        AssertLocked(cls);
        int c = cls.Index, capacity = Classes.SlotsPerSlab[c];
        return (cls.Slabs * capacity - cls.UsedSlots) / capacity * Classes.PagesPerSlab[c];
    }

    /// <summary>One slot from a slab other than <paramref name="excludeHead"/>: the fullest such slab, else a freshly
    /// carved one. Takes the class lock. Returns 0 when the arena has no room for a new slab.</summary>
    public nint AllocateSlotOutside(int c, int excludeHead)
    {
        SlabClass cls = Class[c];
        Span<nint> one = stackalloc nint[1];
        lock (cls.Lock)
        {
            int head = FindSlabLocked(cls, excludeHead);
            if (head < 0) head = CarveSlabLocked(cls);
            return head >= 0 && TakeSlotsLocked(cls, head, one, 1) == 1 ? one[0] : 0;
        }
    }

    /// <summary>The fullest non-full slab of the class other than <paramref name="excludeHead"/>, or -1.</summary>
    public int FindSlabLocked(SlabClass cls, int excludeHead)
    {
        AssertLocked(cls);
        for (int g = 1; g < Groups; g++)
            for (int p = cls.GroupHeads[g]; p >= 0; p = _map.Page(p).Next)
                if (p != excludeHead) return p;
        return -1;
    }

    /// <summary>Most slabs one <see cref="TakeFromFullestLocked"/> takes slots from.</summary>
    public const int DestinationSlabs = 16;

    /// <summary>
    /// Takes up to <paramref name="max"/> slots from the fullest slabs of the class other than
    /// <paramref name="excludeHead"/>, never carving a new one: each slab is filled before the next fullest is used,
    /// the slots <see cref="FindSlabLocked"/> and <see cref="TakeSlotsLocked"/> would give one at a time. The slabs
    /// (up to <see cref="DestinationSlabs"/>) are chosen first, since filling one moves it to the full group and off the
    /// list being walked. A slab's free-slot list is a chain of loads through its own slots, one cache miss after
    /// another when they were freed in no particular order, and which slots it gives is unknown until it is walked; so
    /// every line of the part of a slab in use is asked for at once first (independent loads, which overlap), and the
    /// walk, and the copy into those slots that follows, hit the cache. Only for a slab of at most
    /// <see cref="PrefetchSlabBytes"/> in use that gives at least <see cref="PrefetchSlabFromSlots"/> slots: the lines
    /// asked for stay within what a core's cache holds, and a larger slab holds larger slots, each a long copy that one
    /// miss adds little to. Appends each slab used to <paramref name="used"/>. Returns how many slots were taken.
    /// Caller holds the class lock.
    /// </summary>
    public int TakeFromFullestLocked(SlabClass cls, int excludeHead, Span<nint> dst, int max, List<int> used)
    {
        AssertLocked(cls);
        int c = cls.Index, size = Classes.Size[c], capacity = Classes.SlotsPerSlab[c];
        max = Math.Min(max, dst.Length);
        Span<int> heads = stackalloc int[DestinationSlabs];
        int k = 0, planned = 0;
        for (int g = 1; g < Groups && planned < max && k < DestinationSlabs; g++)
            for (int p = cls.GroupHeads[g]; p >= 0 && planned < max && k < DestinationSlabs; p = _map.Page(p).Next)
            {
                if (p == excludeHead) continue;
                heads[k++] = p;
                planned += capacity - _map.Page(p).RefCount;
            }
        for (int i = 0, left = max; i < k; i++)
        {
            ref PageDescriptor d = ref _map.Page(heads[i]);
            long bytes = (long)d.Bump * size;
            int share = Math.Min(capacity - d.RefCount, left);
            left -= share;
            if (d.SlabFreeSlot >= 0 && share >= PrefetchSlabFromSlots && bytes <= PrefetchSlabBytes) PrefetchRange(_map.AddressOf(heads[i]), bytes);
        }
        int n = 0;
        for (int i = 0; i < k && n < max; i++)
        {
            n += TakeSlotsLocked(cls, heads[i], dst[n..], max - n);
            used.Add(heads[i]);
        }
        return n;
    }

    /// <summary>Free slots to take from a slab from which its lines are prefetched before its free list is walked.</summary>
    private const int PrefetchSlabFromSlots = 4;
    /// <summary>Largest part of a slab in use whose lines are prefetched before its free list is walked.</summary>
    private const int PrefetchSlabBytes = 16 << 10;
    private const int CacheLine = 64;

    /// <summary>Asks the cache for every line of <c>[start, start + bytes)</c>, memory the caller owns (a prefetch never
    /// faults). A no-op where the CPU has no prefetch instruction .NET exposes.</summary>
    private static void PrefetchRange(nint start, long bytes)
    {
        if (!Sse.IsSupported) return;
        for (long off = 0; off < bytes; off += CacheLine) Sse.Prefetch0((void*)(start + (nint)off));
    }

    /// <summary>Takes up to <paramref name="max"/> slots from one slab; caller holds the class lock.</summary>
    public int TakeSlotsLocked(SlabClass cls, int head, Span<nint> dst, int max)
    {
        AssertLocked(cls);
        int c = cls.Index;
        int size = Classes.Size[c], capacity = Classes.SlotsPerSlab[c];
        ref PageDescriptor d = ref _map.Page(head);
        nint slab = _map.AddressOf(head);
        int n = 0;
        while (n < max && d.RefCount < capacity)
        {
            int slot;
            bool carved = d.SlabFreeSlot < 0;
            if (!carved)
            {
                slot = d.SlabFreeSlot;
                d.SlabFreeSlot = *(int*)(slab + slot * size);
            }
            else
            {
                slot = d.Bump++;
            }
            d.RefCount++;
            if (_poison.Enabled) CheckAndPoisonTaken(slab + slot * size, size, carved);
            dst[n++] = slab + slot * size;
        }
        cls.UsedSlots += n;
        Regroup(cls, head, ref d);
        return n;
    }

    /// <summary>Poisoning on: a slot leaving its slab is checked (a free-listed slot holds the pattern after its link;
    /// a slot carved for the first time lies on free pages, so each page's part of it holds the pattern or zero) and
    /// then filled, so that every slot a cache holds, and every slot handed out, holds the pattern throughout. Caller
    /// holds the class lock (the slot is the caller's from here).</summary>
    private void CheckAndPoisonTaken(nint slot, int size, bool carved)
    {
        if (carved) _poison.CheckPoisonOrZero(slot, size);
        else _poison.Check(slot + FreePoison.SlotLinkBytes, size - FreePoison.SlotLinkBytes);
        FreePoison.Fill(slot, size);
    }

    /// <summary>Returns slots to their slabs. Takes the class lock. A slab that becomes empty is kept (up to
    /// <see cref="RetainedEmptySlabs"/>) or freed to the buddy allocator.</summary>
    public void FreeSlots(int c, ReadOnlySpan<nint> slots)
    {
        SlabClass cls = Class[c];
        lock (cls.Lock)
        {
            foreach (nint addr in slots) FreeSlotLocked(cls, addr);
        }
    }

    public void FreeSlotLocked(SlabClass cls, nint addr)
    {
        AssertLocked(cls);
        int c = cls.Index;
        int head = _map.HeadOf(_map.PageOf(addr));
        ref PageDescriptor d = ref _map.Page(head);
        Debug.Assert(d.Kind == PageKind.SlabHead && d.SlabClass == c && d.SlabKind == Kind);
        nint slab = _map.AddressOf(head);
        int slot = Classes.SlotOf(c, (int)(addr - slab));
        if (_poison.Enabled) FreePoison.Fill(addr, Classes.Size[c]);   // free storage holds the pattern, after the link
        *(int*)addr = d.SlabFreeSlot;
        d.SlabFreeSlot = slot;
        d.RefCount--;
        cls.UsedSlots--;
        Regroup(cls, head, ref d);
        if (d.RefCount == 0 && !d.SlabIsolated && cls.EmptySlabs > RetainedEmptySlabs) ReleaseSlabLocked(cls, head);
    }

    // ------------------------------------------------------------------ isolation (the compactor's side)

    /// <summary>Takes a slab off its fullness list so that nothing allocates from it while its blocks move.
    /// Caller holds the class lock.</summary>
    public void IsolateLocked(SlabClass cls, int head)
    {
        AssertLocked(cls);
        ref PageDescriptor d = ref _map.Page(head);
        Debug.Assert(!d.SlabIsolated);
        Unlink(cls, head, ref d, d.SlabGroup);
        d.SlabIsolated = true;
    }

    /// <summary>Ends a slab's isolation: back on the list of its fullness, or released when empty and either
    /// <paramref name="releaseIfEmpty"/> is set (the compactor emptied it on purpose) or the class already keeps an
    /// empty slab. Caller holds the class lock (takes the zone lock to release). True when the slab was released.</summary>
    public bool PutbackLocked(SlabClass cls, int head, bool releaseIfEmpty)
    {
        AssertLocked(cls);
        ref PageDescriptor d = ref _map.Page(head);
        Debug.Assert(d.SlabIsolated);
        d.SlabIsolated = false;
        Link(cls, head, ref d, GroupOf(d.RefCount, Classes.SlotsPerSlab[cls.Index]));
        if (d.RefCount != 0 || (!releaseIfEmpty && cls.EmptySlabs <= RetainedEmptySlabs)) return false;
        ReleaseSlabLocked(cls, head);
        return true;
    }

    /// <summary>Writes the descriptors of a new, isolated slab of class <paramref name="cls"/> on pages the caller owns
    /// (the compactor's destination) in <paramref name="zone"/>. Caller holds the class lock and the zone lock.</summary>
    public void InitIsolatedSlabLocked(SlabClass cls, Zone zone, int start)
    {
        AssertLocked(cls);
        _pages.InitSlabLocked(zone, start, Classes.PagesPerSlab[cls.Index], cls.Index, Kind);
        _map.Page(start).SlabIsolated = true;
        cls.Slabs++;
        cls.SlabsCarved++;
    }

    /// <summary>Frees an empty slab's pages to the buddy allocator (poisoned whole when poisoning is on: the free-slot
    /// links, reverse map and uncarved slots included); caller holds the class lock (takes the zone lock).</summary>
    public void ReleaseSlabLocked(SlabClass cls, int head)
    {
        AssertLocked(cls);
        ref PageDescriptor d = ref _map.Page(head);
        Debug.Assert(d.RefCount == 0);
        Unlink(cls, head, ref d, d.SlabGroup);
        cls.Slabs--;
        cls.SlabsFreed++;
        _pages.FreePages(head, Classes.PagesPerSlab[cls.Index]);
    }

    private int CarveSlabLocked(SlabClass cls)
    {
        AssertLocked(cls);
        int c = cls.Index;
        int pages = Classes.PagesPerSlab[c];
        int head = _pages.AllocateSlab(pages, Kind, c);
        if (head < 0) return -1;
        cls.Slabs++;
        cls.SlabsCarved++;
        ref PageDescriptor d = ref _map.Page(head);
        Link(cls, head, ref d, EmptyGroup);
        return head;
    }

    /// <summary>Moves a slab to the fullness group matching its RefCount (an isolated slab stays off the lists).</summary>
    public void Regroup(SlabClass cls, int head, ref PageDescriptor d)
    {
        AssertLocked(cls);
        if (d.SlabIsolated) return;
        int g = GroupOf(d.RefCount, Classes.SlotsPerSlab[cls.Index]);
        if (g == d.SlabGroup) return;
        Unlink(cls, head, ref d, d.SlabGroup);
        Link(cls, head, ref d, g);
    }

    private void Link(SlabClass cls, int head, ref PageDescriptor d, int group)
    {
        d.SlabGroup = group;
        d.Prev = -1;
        d.Next = cls.GroupHeads[group];
        if (d.Next >= 0) _map.Page(d.Next).Prev = head;
        cls.GroupHeads[group] = head;
        cls.GroupCounts[group]++;
    }

    private void Unlink(SlabClass cls, int head, ref PageDescriptor d, int group)
    {
        if (group < 0) return;
        if (d.Prev >= 0) _map.Page(d.Prev).Next = d.Next; else cls.GroupHeads[group] = d.Next;
        if (d.Next >= 0) _map.Page(d.Next).Prev = d.Prev;
        d.Next = d.Prev = -1;
        d.SlabGroup = -1;
        cls.GroupCounts[group]--;
    }

    /// <summary>Address of the reverse-map word of the slot at <paramref name="addr"/> (its handle index).
    /// Lock-free: the caller owns the slot (just allocated, or a frozen migration's destination), which counts in the
    /// slab's RefCount, so the slab cannot be released and its head and tail descriptors do not change meanwhile.</summary>
    public int* ReverseMapWord(nint addr, int c)
    {
        int head = _map.HeadOf(_map.PageOf(addr));
        nint slab = _map.AddressOf(head);
        int slot = Classes.SlotOf(c, (int)(addr - slab));
        return (int*)(slab + Classes.ReverseMapOffset[c]) + slot;
    }

    /// <summary>Checks every slab of every class; caller holds no lock (takes each class lock). Null when consistent.</summary>
    public string? Validate()
    {
        foreach (SlabClass cls in Class)
        {
            lock (cls.Lock)
            {
                long slabs = 0, used = 0;
                int capacity = Classes.SlotsPerSlab[cls.Index];
                for (int g = 0; g < Groups; g++)
                {
                    int n = 0;
                    for (int p = cls.GroupHeads[g]; p >= 0; p = _map.Page(p).Next)
                    {
                        ref PageDescriptor d = ref _map.Page(p);
                        if (d.Kind != PageKind.SlabHead) return $"{Kind} class {Classes.Size[cls.Index]}: page {p} on a fullness list is {d.Kind}";
                        if (d.SlabGroup != g || GroupOf(d.RefCount, capacity) != g) return $"{Kind} class {Classes.Size[cls.Index]}: slab {p} in wrong group {g}";
                        int freeListed = 0;
                        nint slab = _map.AddressOf(p);
                        for (int s = d.SlabFreeSlot; s >= 0; s = *(int*)(slab + s * Classes.Size[cls.Index]))
                        {
                            if (s >= d.Bump || ++freeListed > capacity) return $"{Kind} class {Classes.Size[cls.Index]}: slab {p} free list corrupt";
                        }
                        if (d.RefCount + freeListed + (capacity - d.Bump) != capacity)
                            return $"{Kind} class {Classes.Size[cls.Index]}: slab {p} used {d.RefCount} + free {freeListed} + uncarved {capacity - d.Bump} != {capacity}";
                        n++;
                        used += d.RefCount;
                    }
                    if (n != cls.GroupCounts[g]) return $"{Kind} class {Classes.Size[cls.Index]}: group {g} counts {cls.GroupCounts[g]}, list has {n}";
                    slabs += n;
                }
                if (slabs != cls.Slabs || used != cls.UsedSlots) return $"{Kind} class {Classes.Size[cls.Index]}: counters disagree with lists";
            }
        }
        return null;
    }
}
