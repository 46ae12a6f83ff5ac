namespace Compaction.Allocator.Pins;

/// <summary>
/// One thread's pin records (native-layout.md, "Pins"): the first record, which every pin and every free's
/// pinned-by-this-thread check reads, and the overflow records a thread gets when it holds more than
/// <see cref="Layout.PinSlot.SlotsPerRecord"/> slot pins at once. Made once per thread by <see cref="PinRegistry.Current"/>;
/// thread caches and heap contexts keep a reference so that their fast paths need no thread-local lookup.
/// </summary>
/// <remarks>Only the owning thread reads or writes <see cref="Overflow"/> and takes slots; the finalizer runs when
/// the thread is gone (nothing references this object but the thread's own statics and its caches).</remarks>
internal sealed unsafe class ThreadPins
{
    /// <summary>The first record's slot line.</summary>
    public readonly nint* Slots;
    /// <summary>Further records, null until the thread first holds more than 8 slot pins.</summary>
    public List<nint>? Overflow;

    public ThreadPins(nint record) => Slots = (nint*)record;

    ~ThreadPins()
    {
        PinRegistry.Recycle((nint)Slots);
        if (Overflow != null) foreach (nint r in Overflow) PinRegistry.Recycle(r);
    }
}
