using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using Compaction.Allocator;
using Compaction.Bench.Micro.Threading;

namespace Compaction.Bench.Micro;

/// <summary>
/// Multi-threaded allocate/free workloads, every allocator in the same run: NativeHeap (movable blocks), glibc
/// (NativeMemory, the baseline), mimalloc, tcmalloc, jemalloc. Seeded sizes 16-256 B, the same sequence for every
/// allocator. An invoke is <see cref="Pairs"/> allocate+free pairs (or free+allocate steps) over all threads, so
/// a thread hand-off (microseconds) is amortized over milliseconds of work, and BenchmarkDotNet reports ns per pair.
/// </summary>
/// <remarks>
/// <para>Each row's allocator is chosen by its GlobalSetup (<c>Target =</c> the row's method), which builds the
/// workload once over that allocator's <see cref="IAlloc"/> struct: the benchmark methods themselves are all one
/// line, <c>Run the team on the work</c>. Threads come from a <see cref="ThreadTeam"/> created in GlobalSetup
/// (the benchmark thread is participant 0) and joined in GlobalCleanup.</para>
/// <para>Each workload's inner loop is a static method over one batch (or round), marked NoInlining and called
/// hundreds of times per invoke, as AllocFreeBenchmarks' methods are: it is tiered up like them, with a profile.
/// (Written as one long loop entered once per invoke, the loop's final tier-1 code, compiled with synthesized PGO
/// after on-stack replacement, ran the same pairs 2.5 times slower than the OSR code and than SmallAllocFree, for
/// every allocator; with DOTNET_TieredPGO=0 the gap was gone.)</para>
/// <para>Timings are wall-clock time of the whole team: with 2 threads on 2 cores shared with anything else, a
/// busy machine shows up here first (the summary prints the load average).</para>
/// </remarks>
[SuppressMessage("Design", "CA1001:Types that own disposable fields should be disposable",
    Justification = "BenchmarkDotNet owns the lifetime: the fields are made in [GlobalSetup] and disposed in " +
                    "[GlobalCleanup]; it never calls Dispose on a benchmark instance (dotnet/BenchmarkDotNet#1409).")]
public abstract class ThreadedBenchmarks
{
    /// <summary>Allocate+free pairs (or steps) per invoke, over all threads.</summary>
    public const int Pairs = 200_000;
    /// <summary>Blocks per batch and seed of the sizes, as in <see cref="AllocFreeBenchmarks"/>.</summary>
    public const int Blocks = AllocFreeBenchmarks.Blocks;
    public const int MinSize = 16, MaxSize = 256;

    /// <summary>Threads in the team (the benchmark thread included).</summary>
    protected virtual int Participants => 2;

    /// <summary>The workload over one allocator; called once, in GlobalSetup.</summary>
    protected abstract ThreadWork CreateWork<T>(T alloc) where T : struct, IAlloc;

    private ThreadTeam? _team;
    private ThreadWork? _work;
    private NativeHeap? _heap;

    /// <summary>Participant <paramref name="participant"/>'s sizes: <see cref="Blocks"/> seeded sizes in
    /// [<see cref="MinSize"/>, <see cref="MaxSize"/>]; participant 0's are SmallAllocFree's.</summary>
    public static int[] SeededSizes(int participant)
    {
        var rng = new Random(AllocFreeBenchmarks.Seed + participant);
        int[] sizes = new int[Blocks];
        for (int i = 0; i < sizes.Length; i++) sizes[i] = rng.Next(MinSize, MaxSize + 1);
        return sizes;
    }

    [GlobalSetup(Target = nameof(NativeHeapMovable))]
    public void SetupNativeHeap()
    {
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = 256L << 20 });
        Prepare(new HeapAlloc(_heap));
    }

    [GlobalSetup(Target = nameof(Glibc))]
    public void SetupGlibc() => Prepare(new GlibcAlloc());

    [GlobalSetup(Target = nameof(Mimalloc))]
    public void SetupMimalloc() => Prepare(new PeerAlloc(Peers.MimallocPeer!));

    [GlobalSetup(Target = nameof(Tcmalloc))]
    public void SetupTcmalloc() => Prepare(new PeerAlloc(Peers.TcmallocPeer!));

    [GlobalSetup(Target = nameof(Jemalloc))]
    public void SetupJemalloc() => Prepare(new PeerAlloc(Peers.JemallocPeer!));

    private void Prepare<T>(T alloc) where T : struct, IAlloc
    {
        _team = new ThreadTeam(Participants);
        _work = CreateWork(alloc);
        _team.Prepare(_work);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _work?.Release();
        _team?.Dispose();
        _heap?.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Pairs, Description = "NativeHeap movable")]
    public void NativeHeapMovable() => _team!.Run(_work!);

    [Benchmark(Baseline = true, OperationsPerInvoke = Pairs, Description = "glibc (NativeMemory)")]
    [Peer(Peers.Glibc)]
    public void Glibc() => _team!.Run(_work!);

    [Benchmark(OperationsPerInvoke = Pairs, Description = "mimalloc")]
    [Peer(Peers.Mimalloc)]
    public void Mimalloc() => _team!.Run(_work!);

    [Benchmark(OperationsPerInvoke = Pairs, Description = "tcmalloc")]
    [Peer(Peers.Tcmalloc)]
    public void Tcmalloc() => _team!.Run(_work!);

    [Benchmark(OperationsPerInvoke = Pairs, Description = "jemalloc")]
    [Peer(Peers.Jemalloc)]
    public void Jemalloc() => _team!.Run(_work!);
}

/// <summary>
/// Threads with their own blocks: each of <see cref="Threads"/> threads runs SmallAllocFree's loop (allocate 1000,
/// free them in order) over its own seeded sizes, <see cref="ThreadedBenchmarks.Pairs"/> / Threads pairs each. ns per
/// pair over the pairs of all threads, so <c>Scaling = ns(1 thread) / ns(2 threads)</c> is the 2-thread throughput
/// over the 1-thread throughput (2.00 is perfect; no shared state but the allocator's).
/// </summary>
public class ThreadedOwnBlocks : ThreadedBenchmarks
{
    [Params(1, 2)]
    public int Threads { get; set; } = 2;

    protected override int Participants => Threads;

    protected override ThreadWork CreateWork<T>(T alloc) => new Work<T>(alloc, Threads);

    private sealed class Work<T>(T alloc, int threads) : ThreadWork where T : struct, IAlloc
    {
        private readonly T _alloc = alloc;
        private readonly int _batches = Pairs / threads / Blocks;
        private readonly int[][] _sizes = [.. Enumerable.Range(0, threads).Select(SeededSizes)];
        private readonly long[][] _blocks = [.. Enumerable.Range(0, threads).Select(_ => new long[Blocks])];

        public override void Run(ThreadTeam team, int participant)
        {
            int[] sizes = _sizes[participant];
            long[] blocks = _blocks[participant];
            for (int b = 0; b < _batches; b++) Batch(_alloc, sizes, blocks);
        }

        /// <summary>AllocFreeBenchmarks' loop: allocate every size, then free in the same order.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void Batch(T alloc, int[] sizes, long[] blocks)
        {
            for (int i = 0; i < sizes.Length; i++) blocks[i] = alloc.Allocate(sizes[i]);
            for (int i = 0; i < sizes.Length; i++) alloc.Free(blocks[i]);
        }
    }
}

/// <summary>
/// Producer/consumer: thread 0 allocates and pushes each block into a bounded SPSC ring (<see cref="RingCapacity"/>
/// slots), thread 1 pops and frees it, so every block is freed by the thread that did not allocate it, one at a time.
/// ns per allocate+free pair.
/// </summary>
public class ThreadedProducerConsumer : ThreadedBenchmarks
{
    public const int RingCapacity = 1024;

    protected override ThreadWork CreateWork<T>(T alloc) => new Work<T>(alloc);

    private sealed class Work<T>(T alloc) : ThreadWork where T : struct, IAlloc
    {
        private readonly T _alloc = alloc;
        private readonly int[] _sizes = SeededSizes(0);
        private readonly SpscRing _ring = new(RingCapacity);

        public override void Run(ThreadTeam team, int participant)
        {
            for (int b = 0; b < Pairs / Blocks; b++)
            {
                if (participant == 0) Produce(_alloc, _sizes, _ring, team);
                else Consume(_alloc, Blocks, _ring, team);
            }
        }

        /// <summary>Thread 0, one batch: allocate each size and push the block.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void Produce(T alloc, int[] sizes, SpscRing ring, ThreadTeam team)
        {
            for (int i = 0; i < sizes.Length; i++) ring.Push(alloc.Allocate(sizes[i]), team);
        }

        /// <summary>Thread 1, one batch: pop <paramref name="count"/> blocks and free each.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void Consume(T alloc, int count, SpscRing ring, ThreadTeam team)
        {
            for (int n = 0; n < count; n++) alloc.Free(ring.Pop(team));
        }
    }
}

/// <summary>
/// Larson-style: 2 threads, each with an array of 1000 slots holding live blocks; a step frees a random slot's block
/// and allocates one of random size (16-256 B) into it. Every <see cref="StepsPerRound"/> steps the threads meet at a
/// barrier and swap arrays, so most blocks are freed by the thread that did not allocate them while both threads
/// allocate too: the case where per-thread caches fail. ns per free+allocate step (<see cref="ThreadedBenchmarks.Pairs"/>
/// steps per invoke over both threads). Slots and sizes come from a xorshift generator per thread, reseeded each
/// invoke: the same sequence every invoke and for every allocator.
/// </summary>
public class ThreadedLarson : ThreadedBenchmarks
{
    public const int StepsPerRound = 1000;

    protected override ThreadWork CreateWork<T>(T alloc) => new Work<T>(alloc);

    private sealed class Work<T>(T alloc) : ThreadWork where T : struct, IAlloc
    {
        private readonly T _alloc = alloc;
        private readonly long[][] _arrays = [new long[Blocks], new long[Blocks]];
        private readonly SpinBarrier _roundEnd = new(2);

        /// <summary>Thread p fills array p with its seeded sizes: the blocks start as that thread's.</summary>
        public override void Prepare(ThreadTeam team, int participant)
        {
            T alloc = _alloc;
            int[] sizes = SeededSizes(participant);
            long[] slots = _arrays[participant];
            for (int i = 0; i < slots.Length; i++) slots[i] = alloc.Allocate(sizes[i]);
        }

        public override void Run(ThreadTeam team, int participant)
        {
            ulong x = (ulong)(AllocFreeBenchmarks.Seed + participant) * 0x9E3779B97F4A7C15UL | 1;
            int rounds = Pairs / 2 / StepsPerRound;
            for (int r = 0; r < rounds; r++)
            {
                // Round r: thread p works on array (p + r) mod 2; the barrier keeps the two threads on different arrays.
                x = Round(_alloc, _arrays[(participant + r) & 1], x);
                _roundEnd.SignalAndWait(team);
            }
        }

        /// <summary>One round of <see cref="StepsPerRound"/> steps on <paramref name="slots"/>, the generator's
        /// state in and out.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static ulong Round(T alloc, long[] slots, ulong x)
        {
            for (int s = 0; s < StepsPerRound; s++)
            {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;   // xorshift64: high half picks the slot, low half the size
                int slot = (int)(((x >> 32) * (ulong)slots.Length) >> 32);
                int size = MinSize + (int)(((x & 0xFFFF_FFFFUL) * (ulong)(MaxSize - MinSize + 1)) >> 32);
                alloc.Free(slots[slot]);
                slots[slot] = alloc.Allocate(size);
            }
            return x;
        }

        public override void Release()
        {
            T alloc = _alloc;
            foreach (long[] slots in _arrays)
                for (int i = 0; i < slots.Length; i++)
                    if (slots[i] != 0) { alloc.Free(slots[i]); slots[i] = 0; }
        }
    }
}

/// <summary>
/// xmalloc-test-style: thread 0 allocates batches of <see cref="BatchBlocks"/> blocks and hands each full batch to
/// thread 1 through an SPSC ring of batch numbers; thread 1 frees the batch's blocks and hands the empty batch back
/// through a second ring. <see cref="Batches"/> batch buffers exist, so at most Batches x BatchBlocks blocks are
/// live. ns per allocate+free pair.
/// </summary>
public class ThreadedXmalloc : ThreadedBenchmarks
{
    public const int BatchBlocks = 100;
    public const int Batches = 10;

    protected override ThreadWork CreateWork<T>(T alloc) => new Work<T>(alloc);

    private sealed class Work<T> : ThreadWork where T : struct, IAlloc
    {
        private readonly T _alloc;
        private readonly int[] _sizes = SeededSizes(0);
        private readonly long[] _blocks = new long[Batches * BatchBlocks];   // batch k is [k * BatchBlocks, (k + 1) * BatchBlocks)
        private readonly SpscRing _full = new(16);    // thread 0 -> thread 1
        private readonly SpscRing _empty = new(16);   // thread 1 -> thread 0

        public Work(T alloc)
        {
            _alloc = alloc;
            // Before any run, on one thread: every batch starts empty, on thread 0's side.
            for (int k = 0; k < Batches; k++)
                if (!_empty.TryPush(k)) throw new InvalidOperationException("the ring of empty batches is smaller than the batches");
        }

        public override void Run(ThreadTeam team, int participant)
        {
            for (int n = 0; n < Pairs / BatchBlocks; n++)
            {
                if (participant == 0)
                {
                    int k = (int)_empty.Pop(team);
                    // Walks the 1000 seeded sizes, 100 at a time.
                    Fill(_alloc, _blocks.AsSpan(k * BatchBlocks, BatchBlocks), _sizes.AsSpan(n * BatchBlocks % Blocks, BatchBlocks));
                    _full.Push(k, team);
                }
                else
                {
                    int k = (int)_full.Pop(team);
                    Drain(_alloc, _blocks.AsSpan(k * BatchBlocks, BatchBlocks));
                    _empty.Push(k, team);
                }
            }
        }

        /// <summary>Thread 0: one batch, a block of each size.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void Fill(T alloc, Span<long> batch, ReadOnlySpan<int> sizes)
        {
            for (int i = 0; i < batch.Length; i++) batch[i] = alloc.Allocate(sizes[i]);
        }

        /// <summary>Thread 1: frees a batch's blocks.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void Drain(T alloc, Span<long> batch)
        {
            for (int i = 0; i < batch.Length; i++) alloc.Free(batch[i]);
        }
    }
}
