namespace Compaction.Allocator.Compaction;

/// <summary>
/// The compactor's private free list (the kernel's cc->freepages): pages the free scanner took off the buddy lists,
/// kept as disjoint ranges sorted by start and coalesced with their neighbours. Only the compacting thread touches it.
/// </summary>
internal sealed class FreePool
{
    private readonly List<(int start, int length)> _ranges = [];

    public int Count => _ranges.Count;
    /// <summary>Pages the pool holds, over all its ranges.</summary>
    public long TotalPages { get; private set; }
    public IReadOnlyList<(int start, int length)> Ranges => _ranges;
    public void Clear() { _ranges.Clear(); TotalPages = 0; }

    /// <summary>True when some range holds <paramref name="pages"/> contiguous pages.</summary>
    public bool Fits(int pages)
    {
        foreach ((_, int length) in _ranges)
            if (length >= pages) return true;
        return false;
    }

    /// <summary>Adds pages [start, start + length), merging with adjacent ranges.</summary>
    public void Add(int start, int length)
    {
        int i = LowerBound(start);
        int end = start + length;
        if (i > 0 && _ranges[i - 1].start + _ranges[i - 1].length == start)
        {
            start = _ranges[i - 1].start;
            _ranges.RemoveAt(--i);
        }
        if (i < _ranges.Count && _ranges[i].start == end)
        {
            end += _ranges[i].length;
            _ranges.RemoveAt(i);
        }
        _ranges.Insert(i, (start, end - start));
        TotalPages += length;
    }

    /// <summary>Best fit: takes <paramref name="pages"/> from the start of the shortest range that holds them.
    /// Returns the first page, or -1 when no range is long enough.</summary>
    public int Take(int pages)
    {
        int best = -1;
        for (int i = 0; i < _ranges.Count; i++)
        {
            int candidate = _ranges[i].length;
            if (candidate < pages || (best >= 0 && candidate >= _ranges[best].length)) continue;
            best = i;
            if (candidate == pages) break;   // an exact fit cannot be beaten
        }
        if (best < 0) return -1;
        (int start, int length) = _ranges[best];
        if (length == pages) _ranges.RemoveAt(best);
        else _ranges[best] = (start + pages, length - pages);
        TotalPages -= pages;
        return start;
    }

    private int LowerBound(int start)
    {
        int lo = 0, hi = _ranges.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_ranges[mid].start < start) lo = mid + 1; else hi = mid;
        }
        return lo;
    }
}
