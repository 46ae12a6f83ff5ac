using Compaction.Allocator;

namespace Compaction.Tests;

/// <summary>
/// The background compactor at full aggressiveness on a heap that I/O tests rent from: the background thread wakes
/// every millisecond with every trigger on (proactiveness 100, a waste run at any waste, all of a core), and a churn
/// thread keeps fragmenting the movable zone (allocate, write, free at random) and calls <see cref="NativeHeap.Compact"/>
/// between rounds, verifying every byte of its own blocks. Dispose stops both and reports the churn's corrupt bytes.
/// </summary>
internal sealed class ArenaPoolStress : IDisposable
{
    private readonly Thread _churn;
    private volatile bool _stop;

    public ArenaPoolStress(long arenaBytes = 256L << 20, int movablePercent = 50)
    {
        Heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = arenaBytes, MovableZonePercent = movablePercent, CompactionInterval = TimeSpan.FromMilliseconds(1),
            Proactiveness = 100, WasteHighRatio = 1, WasteLowRatio = 1, WasteMinBytes = 0, CompactionCpuShare = 1,
            DecommitDelay = TimeSpan.Zero,
        });
        Heap.StartBackgroundCompaction();
        _churn = new Thread(Churn) { IsBackground = true, Name = "pool stress churn" };
        _churn.Start();
    }

    public NativeHeap Heap { get; }
    public int CorruptBytes { get; private set; }
    public long Compactions { get; private set; }

    private void Churn()
    {
        var rng = new Random(1234);
        var live = new List<BlockHandle>();
        while (!_stop)
        {
            for (int i = 0; i < 2000 && !_stop; i++)
            {
                if (live.Count > 0 && rng.Next(2) == 0)
                {
                    int j = rng.Next(live.Count);
                    CorruptBytes += TestHeaps.CountCorrupt(Heap, live[j]);
                    Heap.Free(live[j]);
                    live[j] = live[^1];
                    live.RemoveAt(live.Count - 1);
                }
                else if (Heap.TryAllocate(rng.Next(8) == 0 ? rng.Next(17_000, 60_000) : rng.Next(1, 2000), BlockKind.Movable, out BlockHandle h))
                {
                    TestHeaps.Fill(Heap, h);
                    live.Add(h);
                }
            }
            Heap.Compact();
            Compactions++;
        }
        foreach (BlockHandle h in live)
        {
            CorruptBytes += TestHeaps.CountCorrupt(Heap, h);
            Heap.Free(h);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _churn.Join();
        Heap.StopBackgroundCompaction();
        Heap.Dispose();
    }
}
