using System.Diagnostics;

namespace Compaction.Allocator.Caches;

/// <summary>
/// The depot between thread caches and the slabs and zones (a transfer cache): per bin, a locked stack of bound free
/// entries (as the handles they will be issued with). A thread whose bin overflows moves half of it here in one copy; a thread whose bin runs dry takes a batch
/// from here before binding fresh storage. So a block freed on another thread than the one that allocated it costs
/// one lock per batch, never one per block (native-layout.md, "Per-thread caches").
/// </summary>
/// <remarks>
/// Lock ordering: a bin's lock is a leaf: nothing else is taken while it is held (unbinding what does not fit
/// happens after it is released). Runs held here are bounded in bytes (<see cref="RunBytesCap"/>); slab entries by
/// each bin's capacity.
/// </remarks>
internal sealed class CacheDepot
{
    private readonly CacheBins _layout;
    private readonly Bin?[] _bins;
    private long _runBytes;   // bytes of runs held, all bins (interlocked)

    public CacheDepot(CacheBins layout, long runBytesCap)
    {
        _layout = layout;
        _bins = new Bin?[layout.Count];
        RunBytesCap = runBytesCap;
    }

    /// <summary>The most bytes of runs the depot holds.</summary>
    public long RunBytesCap { get; }

    private sealed class Bin
    {
        public readonly Lock Lock = new();
        public ulong[] Items = new ulong[16];
        public int Count;
    }

    private Bin BinOf(int b)
    {
        Bin? bin = Volatile.Read(ref _bins[b]);
        if (bin != null) return bin;
        Interlocked.CompareExchange(ref _bins[b], new Bin(), null);
        return _bins[b]!;
    }

    /// <summary>Moves as many of <paramref name="entries"/> as fit into bin <paramref name="b"/>; returns how many
    /// (taken from the front of the span). Takes the bin's lock.</summary>
    public int Put(int b, ReadOnlySpan<ulong> entries)
    {
        int n = entries.Length;
        bool run = _layout.IsRun(b);
        if (run)
        {
            long bytes = _layout.RunBytes(b);
            // Racy: threads putting at once may each see the same room, so the cap can be overshot by one batch each.
            long room = (RunBytesCap - Volatile.Read(ref _runBytes)) / bytes;
            n = (int)Math.Clamp(room, 0, n);
        }
        if (n == 0) return 0;
        Bin bin = BinOf(b);
        lock (bin.Lock)
        {
            n = Math.Min(n, _layout.DepotCapacity[b] - bin.Count);
            if (n <= 0) return 0;
            if (bin.Count + n > bin.Items.Length)
                Array.Resize(ref bin.Items, Math.Min(_layout.DepotCapacity[b], Math.Max(bin.Items.Length * 2, bin.Count + n)));
            entries[..n].CopyTo(bin.Items.AsSpan(bin.Count));
            bin.Count += n;
        }
        if (run) Interlocked.Add(ref _runBytes, n * _layout.RunBytes(b));
        return n;
    }

    /// <summary>Takes up to <paramref name="dst"/>.Length entries of bin <paramref name="b"/>, most recently put first.
    /// Takes the bin's lock. Returns how many.</summary>
    public int Take(int b, Span<ulong> dst)
    {
        Bin? bin = Volatile.Read(ref _bins[b]);
        if (bin == null || Volatile.Read(ref bin.Count) == 0) return 0;   // racy peek: an empty bin costs no lock
        int n;
        lock (bin.Lock)
        {
            n = Math.Min(dst.Length, bin.Count);
            bin.Items.AsSpan(bin.Count - n, n).CopyTo(dst);
            bin.Count -= n;
        }
        if (n > 0 && _layout.IsRun(b)) Interlocked.Add(ref _runBytes, -n * _layout.RunBytes(b));
        return n;
    }

    /// <summary>Empties bin <paramref name="b"/> into <paramref name="into"/> (for a drain). Takes the bin's lock.</summary>
    public void TakeAll(int b, List<ulong> into)
    {
        Bin? bin = Volatile.Read(ref _bins[b]);
        if (bin == null) return;
        int n;
        lock (bin.Lock)
        {
            n = bin.Count;
            for (int i = 0; i < n; i++) into.Add(bin.Items[i]);
            bin.Count = 0;
        }
        if (n > 0 && _layout.IsRun(b)) Interlocked.Add(ref _runBytes, -n * _layout.RunBytes(b));
        Debug.Assert(Volatile.Read(ref _runBytes) >= 0);
    }

    /// <summary>Entries held in bin <paramref name="b"/> (racy).</summary>
    public int CountOf(int b)
    {
        Bin? bin = Volatile.Read(ref _bins[b]);
        return bin == null ? 0 : Volatile.Read(ref bin.Count);
    }

    /// <summary>Copies bin <paramref name="b"/>'s entries into <paramref name="into"/> under its lock (validation).</summary>
    public void CopyTo(int b, List<ulong> into)
    {
        Bin? bin = Volatile.Read(ref _bins[b]);
        if (bin == null) return;
        lock (bin.Lock)
            for (int i = 0; i < bin.Count; i++) into.Add(bin.Items[i]);
    }
}
