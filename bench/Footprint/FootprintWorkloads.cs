using Compaction.Bench.Scenarios;

namespace Compaction.Bench.Footprint;

/// <summary>One block a workload holds: the allocator's id, the requested size and the byte it was written with.</summary>
internal readonly record struct Item(long Id, int Size, byte Pattern);

/// <summary>
/// The three service workloads of the <c>footprint</c> command, each a fixed, seeded sequence of requests that every
/// allocator sees identically. <paramref name="scale"/> divides every byte and block count (8 under <c>--quick</c>).
/// </summary>
internal sealed class FootprintWorkload(string name, int scale, int seed)
{
    public const string Mesh = "mesh", Redis = "redis", Burst = "burst";
    public static readonly string[] Names = [Mesh, Redis, Burst];

    private static readonly Func<Random, int> s_burstSizes = SizeMix.LogUniform(16, 256 * 1024);

    public string Name => name;

    private long MeshSmallBytes => (128L << 20) / scale;
    private long MeshLargeBytes => (64L << 20) / scale;
    private int RedisValues => 1_000_000 / scale;
    private long BurstBytes => (2048L << 20) / scale;

    /// <summary>What the workload does, in a sentence of the report.</summary>
    public string Description => name switch
    {
        Mesh => $"{Fmt.Mib(MeshSmallBytes)} of 512 B blocks, written, every other one freed; then {Fmt.Mib(MeshLargeBytes)} of 1 KiB blocks, " +
                $"written, every other one freed (Mesh's adversarial case: live {Fmt.Mib(MeshSmallBytes / 2 + MeshLargeBytes / 2)}, every page half used)",
        Redis => $"{Fmt.N(RedisValues)} values of uniform 64 B-1 KiB, written; 75% deleted at random; refilled with uniform 1-4 KiB values " +
                 "(written) until live bytes are back where they were before the delete",
        Burst => $"{Fmt.Mib(BurstBytes)} of log-uniform 16 B-256 KiB blocks, written; 90% freed at random; then idle",
        _ => throw new ArgumentException($"unknown workload '{name}'"),
    };

    /// <summary>The most bytes the workload has live at once, from its parameters (before the run): mesh's first fill
    /// (128 MiB; after the second fill live is 64 + 64 MiB), redis's fill (the refill stops at the first block that
    /// reaches it, so it overshoots by less than one 4 KiB value: counted), burst's fill plus its largest block (the fill
    /// stops at the first block that reaches the target). The limit row's <c>MemoryLimit</c> is a factor times this.</summary>
    public long PeakLiveBytes => name switch
    {
        Mesh => Math.Max(MeshSmallBytes, MeshSmallBytes / 2 + MeshLargeBytes),
        Redis => RedisFillBytes() + 4096,
        Burst => BurstBytes + 256 * 1024,
        _ => throw new ArgumentException($"unknown workload '{name}'"),
    };

    /// <summary>The idle window after the last step: redis 30 s (the cache churn's 1 s / 5 s / 30 s figures), the others
    /// 15 s; 3 s under <c>--quick</c>.</summary>
    public static int WindowMs(string workload, bool quick) => quick ? 3_000 : workload == Redis ? 30_000 : 15_000;

    /// <summary>The bytes that size NativeHeap's arena: the most the workload has live at once (nominal: the fill
    /// targets), except for mesh, where it is both fills together: until something moves, the 1 KiB blocks cannot use
    /// the 512 B blocks' holes, so that is what the heap holds at the peak (2x the 128 MiB live peak leaves a movable
    /// zone of 192 MiB, 75% of the arena, and the second fill runs out of memory).</summary>
    public long PeakBytes => name switch
    {
        Mesh => MeshSmallBytes + MeshLargeBytes,
        Redis => RedisFillBytes(),
        Burst => BurstBytes,
        _ => throw new ArgumentException($"unknown workload '{name}'"),
    };

    /// <summary>NativeHeap's arena: twice the peak, rounded up to a power of two.</summary>
    public long ArenaBytes => (long)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)(2 * PeakBytes));

    /// <summary>The most blocks the workload holds at once (an upper bound), to size the block list before the baseline.</summary>
    public int Capacity => name switch
    {
        Mesh => (int)(MeshSmallBytes / 512 + MeshLargeBytes / 1024) + 16,
        Redis => RedisValues + (int)(RedisFillBytes() / 1024) + 16,
        Burst => HeapWorkload.CountFill(seed, BurstBytes, s_burstSizes, 0) + 16,
        _ => throw new ArgumentException($"unknown workload '{name}'"),
    };

    private long RedisFillBytes()
    {
        var rng = new Random(seed);
        long bytes = 0;
        for (int i = 0; i < RedisValues; i++) bytes += rng.Next(64, 1025);
        return bytes;
    }

    /// <summary>Runs the workload's steps, announcing each phase to <paramref name="rec"/>; the surviving blocks stay in
    /// <paramref name="items"/>. Returns the live (requested) bytes at the end, the most live at once, the failed
    /// allocations (an allocator that may refuse: the limit row) and each phase's operations and time.</summary>
    public WorkloadResult Run(FootprintAllocator a, RssRecorder rec, List<Item> items)
    {
        var run = new Steps(a, rec, items);
        var rng = new Random(seed);
        switch (name)
        {
            case Mesh:
                run.Phase("fill 512 B");
                for (long i = 0; i < MeshSmallBytes / 512; i++) run.Add(512);
                run.Phase("free every other 512 B");
                run.FreeEveryOther(0);
                int start = items.Count;
                run.Phase("fill 1 KiB");
                for (long i = 0; i < MeshLargeBytes / 1024; i++) run.Add(1024);
                run.Phase("free every other 1 KiB");
                run.FreeEveryOther(start);
                break;
            case Redis:
                run.Phase("fill 64 B-1 KiB");
                for (int i = 0; i < RedisValues; i++) run.Add(rng.Next(64, 1025));
                long target = run.Live;
                run.Phase("delete 75%");
                run.FreeRandom(rng, 3, 4);
                run.Phase("refill 1-4 KiB");
                while (run.Live < target) run.Add(rng.Next(1024, 4097));
                break;
            case Burst:
                run.Phase("fill 16 B-256 KiB");
                while (run.Live < BurstBytes)
                {
                    int n = s_burstSizes(rng);
                    _ = rng.Next(1, 256);   // CountFill's pattern draw, so that Capacity counts these very blocks
                    run.Add(n);
                }
                run.Phase("free 90%");
                run.FreeRandom(rng, 9, 10);
                break;
            default:
                throw new ArgumentException($"unknown workload '{name}'");
        }
        run.EndPhase();
        return new WorkloadResult(run.Live, run.PeakLive, run.Failed, run.Ops);
    }

    /// <summary>The workload's primitive steps over one allocator, keeping the live count the sampler reads.</summary>
    private sealed class Steps(FootprintAllocator a, RssRecorder rec, List<Item> items)
    {
        /// <summary>Refusals in a row after which the workload stops: the limit cannot hold.</summary>
        private const int MaxFailuresInARow = 100_000;

        private int _serial;
        private int _failedInARow;
        private string? _phase;
        private long _phaseStart, _phaseAllocs, _phaseFrees, _phaseFailed;
        public long Live { get; private set; }
        public long PeakLive { get; private set; }
        public long Failed { get; private set; }
        public List<PhaseOps> Ops { get; } = [];

        /// <summary>Ends the current phase (its counts and time) and starts the next, announced to the recorder.</summary>
        public void Phase(string phase)
        {
            EndPhase();
            rec.Phase(phase);
            _phase = phase;
            _phaseAllocs = _phaseFrees = _phaseFailed = 0;
            _phaseStart = System.Diagnostics.Stopwatch.GetTimestamp();
        }

        public void EndPhase()
        {
            if (_phase == null) return;
            double ms = System.Diagnostics.Stopwatch.GetElapsedTime(_phaseStart).TotalMilliseconds;
            Ops.Add(new PhaseOps(_phase, _phaseAllocs, _phaseFrees, _phaseFailed, ms, PeakLive));
            _phase = null;
        }

        /// <summary>Allocates and writes a block. An allocator that may refuse (<see cref="FootprintAllocator.MayFail"/>)
        /// has the refusal counted and the block left out; any other refusal is an error.</summary>
        public void Add(int size)
        {
            byte pattern = (byte)(1 + _serial++ % 251);
            long id = a.Allocate(size);
            if (id == 0)
            {
                if (!a.MayFail) throw new OutOfMemoryException($"{a.Name}: allocating {size} B returned null");
                Failed++;
                _phaseFailed++;
                if (++_failedInARow >= MaxFailuresInARow)
                    throw new OutOfMemoryException($"{a.Name}: {Fmt.N(MaxFailuresInARow)} allocations in a row refused ({Fmt.N(Failed)} in all) at {Fmt.Mib(Live)} live");
                return;
            }
            _failedInARow = 0;
            _phaseAllocs++;
            a.Write(id, size, pattern);
            items.Add(new Item(id, size, pattern));
            Live += size;
            if (Live > PeakLive) PeakLive = Live;
            rec.Live = Live;
        }

        /// <summary>Frees the items at odd offsets from <paramref name="start"/> (in allocation order) and keeps the rest.</summary>
        public void FreeEveryOther(int start)
        {
            int kept = start;
            for (int i = start; i < items.Count; i++)
            {
                if ((i - start) % 2 == 1)
                {
                    a.Free(items[i].Id);
                    _phaseFrees++;
                    Live -= items[i].Size;
                    rec.Live = Live;
                }
                else
                {
                    items[kept++] = items[i];
                }
            }
            items.RemoveRange(kept, items.Count - kept);
        }

        /// <summary>Frees a seeded random <paramref name="numerator"/>/<paramref name="denominator"/> of the items.</summary>
        public void FreeRandom(Random rng, int numerator, int denominator)
        {
            int count = (int)((long)items.Count * numerator / denominator);
            for (int i = 0; i < count; i++)
            {
                int j = rng.Next(i, items.Count);
                (items[i], items[j]) = (items[j], items[i]);
                a.Free(items[i].Id);
                _phaseFrees++;
                Live -= items[i].Size;
                rec.Live = Live;
            }
            items.RemoveRange(0, count);
        }
    }
}

/// <summary>One phase of a workload: blocks allocated (and written), freed, refused, its wall-clock time, and the most
/// bytes live from the workload's start to the phase's end.</summary>
internal readonly record struct PhaseOps(string Phase, long Allocs, long Frees, long Failed, double Ms, long PeakLiveSoFar)
{
    public double OpsPerSecond => Ms > 0 ? (Allocs + Frees) * 1000.0 / Ms : double.NaN;
}

/// <summary>What a workload's run returns: live bytes at the end, the most live at once, refused allocations, phases.</summary>
internal sealed record WorkloadResult(long Live, long PeakLive, long Failed, List<PhaseOps> Ops);
