using System.Collections.Concurrent;

namespace Compaction.Allocator.Pages;

/// <summary>
/// The poison of free storage (<see cref="HeapOptions.PoisonFreedMemory"/>; native-layout.md, "Poisoned free
/// memory"): what the pattern is, filling it, checking it, and the count of use-after-free writes found when storage
/// is handed out again. One per heap, built with the page allocator so that every layer which frees or hands out
/// storage reaches it through <see cref="PageAllocator.Poison"/>.
/// </summary>
/// <remarks>
/// Free storage holds the pattern, with two exceptions that the checks accept: a page the OS gave back (a purge, a
/// decommit) or never touched (above a zone's frontier) reads as zero, so a free page holds either the pattern or
/// zero throughout; and a slot on its slab's free-slot list keeps the list's link in its first 4 bytes. Lock-free:
/// the counter is interlocked; the storage a call reads or fills belongs to the caller (free, and held by it under
/// the lock that guards that storage, or owned as a popped cache entry).
/// </remarks>
internal sealed unsafe class FreePoison
{
    /// <summary>The byte free storage holds (mimalloc's debug fill of freed memory).</summary>
    public const byte Pattern = 0xDF;

    /// <summary>Bytes of a free-listed slot that hold its free-slot link, not the pattern.</summary>
    public const int SlotLinkBytes = sizeof(int);

    /// <summary>Spans are int-sized: larger ranges are walked in pieces of this many bytes.</summary>
    private const int Piece = 1 << 30;

    private readonly int _pageSize;
    private long _detections;

    public FreePoison(bool enabled, int pageSize)
    {
        Enabled = enabled;
        _pageSize = pageSize;
    }

    /// <summary>True when the heap poisons free storage; read once per free and per allocation (a readonly field,
    /// so a heap without the option pays one predictable branch).</summary>
    public readonly bool Enabled;

    /// <summary>Detections not yet reported as events (first changed byte, bytes changed). Most are found under a
    /// class or zone lock, where no listener's code may run (it could call back into the heap), so they wait here and
    /// the API layer raises them once it holds no lock (<see cref="TryTakePending"/>). About
    /// <see cref="MaxPending"/> wait at most (the count is read before the enqueue, so threads reporting at the same
    /// moment may each add one more); later ones are counted but raise no event.</summary>
    private readonly ConcurrentQueue<(nint first, long changed)> _pending = new();
    private const int MaxPending = 64;

    /// <summary>True when detections wait to be raised (a racy peek; <see cref="TryTakePending"/> decides).</summary>
    public bool HasPending => !_pending.IsEmpty;

    /// <summary>Takes the oldest detection not yet raised. Lock-free.</summary>
    public bool TryTakePending(out (nint first, long changed) detection) => _pending.TryDequeue(out detection);

    /// <summary>Use-after-free writes found when storage was handed out again, since the heap was created.</summary>
    public long Detections => Volatile.Read(ref _detections);

    /// <summary>Fills [<paramref name="address"/>, + <paramref name="bytes"/>) with the pattern.</summary>
    public static void Fill(nint address, long bytes)
    {
        for (long done = 0; done < bytes; done += Piece)
            new Span<byte>((void*)(address + (nint)done), (int)Math.Min(Piece, bytes - done)).Fill(Pattern);
    }

    /// <summary>The bytes of [<paramref name="address"/>, + <paramref name="bytes"/>) that do not hold the pattern,
    /// and the first of them (0 when none). One vectorised pass when the range is intact.</summary>
    public static (nint first, long changed) Changed(nint address, long bytes)
    {
        nint first = 0;
        long changed = 0;
        for (long done = 0; done < bytes; done += Piece)
        {
            var span = new ReadOnlySpan<byte>((void*)(address + (nint)done), (int)Math.Min(Piece, bytes - done));
            int at = span.IndexOfAnyExcept(Pattern);
            if (at < 0) continue;
            if (first == 0) first = address + (nint)done + at;
            changed += span.Length - span.Count(Pattern);
        }
        return (first, changed);
    }

    /// <summary>Like <see cref="Changed"/> for free pages (or parts of them): each page's part of the range may
    /// instead read as zero throughout (a page the OS gave back or never backed). Page boundaries are the arena's.</summary>
    public (nint first, long changed) ChangedPoisonOrZero(nint address, long bytes)
    {
        nint first = 0;
        long changed = 0;
        nint end = address + (nint)bytes;
        for (nint p = address; p < end;)
        {
            nint next = Math.Min(end, (p & ~(nint)(_pageSize - 1)) + _pageSize);
            var span = new ReadOnlySpan<byte>((void*)p, (int)(next - p));
            int at = span.IndexOfAnyExcept(Pattern);
            if (at >= 0 && span.IndexOfAnyExcept((byte)0) >= 0)
            {
                if (first == 0) first = p + at;
                changed += span.Length - span.Count(Pattern);
            }
            p = next;
        }
        return (first, changed);
    }

    /// <summary>Checks storage being handed out that must hold the pattern throughout (a slot or run a cache kept,
    /// a free-listed slot past its link); counts and reports a detection. True when intact.</summary>
    public bool Check(nint address, long bytes) => Report(Changed(address, bytes));

    /// <summary>Checks free pages (or an uncarved slot) being handed out, which hold the pattern or zero per page;
    /// counts and reports a detection. True when intact.</summary>
    public bool CheckPoisonOrZero(nint address, long bytes) => Report(ChangedPoisonOrZero(address, bytes));

    private bool Report((nint first, long changed) found)
    {
        if (found.changed == 0) return true;
        Interlocked.Increment(ref _detections);
        // Never throws: callers check storage they have just taken (a slot off its slab under the class lock, with
        // the slab's RefCount raised; a compactor's destination after its source was isolated; an entry popped from a
        // cache), and an exception there would strand it. The queue may need a new segment: if that allocation
        // fails, the detection stays counted and raises no event.
        try
        {
            if (_pending.Count < MaxPending) _pending.Enqueue(found);
        }
        catch (OutOfMemoryException)
        {
        }
        return false;
    }

    /// <summary>The validator's wording of a problem found in free storage.</summary>
    public static string Problem((nint first, long changed) found, string where) =>
        $"use after free at 0x{found.first:x} ({found.changed} bytes changed) in {where}";
}
