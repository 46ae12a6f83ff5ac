using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Slabs;

namespace Compaction.Allocator.Caches;

/// <summary>
/// Binds free handle entries to storage and unbinds them (native-layout.md, "Per-thread caches"): a bound entry's
/// <c>Address</c> is its slot (whose reverse-map word names the entry) or its run (whose head descriptor names it).
/// Binding happens in batches when a cache bin is refilled, so the reverse map is written once per batch instead of
/// once per allocation; unbinding gives the storage back to its slab or zone and the entry to the handle table.
/// </summary>
/// <remarks>Takes the handle-table lock and a class lock or zone locks one after the other, never nested, and
/// never while a cache bin or depot lock is held.</remarks>
internal sealed unsafe class StorageBinder
{
    private readonly SlabAllocator[] _slabs;   // [BlockKind]
    private readonly PageAllocator _pages;
    private readonly PageMap _map;
    private readonly HandleTable _handles;
    private readonly CacheBins _layout;

    public StorageBinder(SlabAllocator[] slabs, PageAllocator pages, HandleTable handles, CacheBins layout)
    {
        _slabs = slabs;
        _pages = pages;
        _map = pages.Map;
        _handles = handles;
        _layout = layout;
    }

    /// <summary>Binds up to <paramref name="dst"/>.Length (at most 512) fresh entries to fresh slots of slab bin
    /// <paramref name="bin"/>; each item is the handle the entry will be issued with. Returns how many (fewer only when
    /// entries or arena memory ran out). A contended lock can throw (interrupted): the popped entries go back first.</summary>
    public int BindSlots(int bin, Span<ulong> dst)
    {
        Span<uint> indices = stackalloc uint[Math.Min(dst.Length, 512)];
        int n = _handles.Pop(indices);
        if (n == 0) return 0;
        BlockKind kind = _layout.KindOf(bin);
        int c = _layout.ClassOf(bin);
        SlabAllocator slabs = _slabs[(int)kind];
        Span<nint> slots = stackalloc nint[n];
        int bound;
        try
        {
            bound = slabs.AllocateSlots(c, slots, n);
        }
        catch
        {
            _handles.Push(indices[..n]);   // slots taken before the throw stay counted in their slab: leaked, never shared
            throw;
        }
        for (int i = 0; i < bound; i++)
        {
            uint index = indices[i];
            HandleEntry* e = HandleStore.Get(index);
            e->Address = slots[i];
            *slabs.ReverseMapWord(slots[i], c) = (int)index;
            dst[i] = HandleBits.Encode(EntryState.Generation(e->State), index);
        }
        if (bound < n) _handles.Push(indices[bound..n]);
        return bound;
    }

    /// <summary>Gives the storage of bound free entries of <paramref name="bin"/> (cache items) back to their slabs or
    /// zones, and the entries to the handle table.</summary>
    public void Unbind(int bin, ReadOnlySpan<ulong> items)
    {
        Span<uint> indices = stackalloc uint[Math.Min(items.Length, 512)];
        for (int done = 0; done < items.Length; done += indices.Length)
        {
            int n = Math.Min(indices.Length, items.Length - done);
            for (int i = 0; i < n; i++) indices[i] = HandleBits.Index(items[done + i]);
            Unbind(bin, indices[..n], entriesRetired: false);
        }
    }

    /// <summary>Like <see cref="Unbind(int, ReadOnlySpan{ulong})"/> for entries named by index (or, with
    /// <paramref name="entriesRetired"/>, only their storage: a retired entry goes back to no list).</summary>
    public void Unbind(int bin, ReadOnlySpan<uint> entries, bool entriesRetired)
    {
        if (entries.IsEmpty) return;
        if (_layout.IsRun(bin))
        {
            int pages = _layout.PagesOf(bin);
            // A bound free run was poisoned (when poisoning is on) as its block was freed, before it was cached.
            foreach (uint index in entries) _pages.FreePoisonedPages(_map.PageOf(HandleStore.Get(index)->Address), pages);
        }
        else
        {
            SlabAllocator slabs = _slabs[(int)_layout.KindOf(bin)];
            Span<nint> slots = stackalloc nint[Math.Min(entries.Length, 512)];
            for (int done = 0; done < entries.Length; done += slots.Length)
            {
                int n = Math.Min(slots.Length, entries.Length - done);
                for (int i = 0; i < n; i++) slots[i] = HandleStore.Get(entries[done + i])->Address;
                slabs.FreeSlots(_layout.ClassOf(bin), slots[..n]);
            }
        }
        if (!entriesRetired) _handles.Push(entries);
    }
}
