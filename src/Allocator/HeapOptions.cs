using Compaction.Allocator.Diagnostics;

namespace Compaction.Allocator;

/// <summary>
/// Settings of a <see cref="NativeHeap"/>. Every property is validated when the heap is created; a bad value raises an
/// <see cref="ArgumentException"/> whose <see cref="ArgumentException.ParamName"/> names the option.
/// </summary>
public sealed class HeapOptions
{
    /// <summary>Bytes of virtual address space to reserve (rounded up to whole max-order blocks, two pageblocks).
    /// Default 1 GiB. From two pageblocks to the smaller of 64 TiB and the whole max-order blocks that fit in
    /// int.MaxValue pages (just under 8 TiB with the default 4 KiB pages).
    /// Reserving costs no memory on Linux; memory is committed one pageblock at a time as it is used.</summary>
    public long ArenaBytes { get; set; } = 1L << 30;

    /// <summary>Page size in bytes: a power of two from 4 KiB to 64 KiB. Default 4 KiB.</summary>
    public int PageSize { get; set; } = 4096;

    /// <summary>Pages per pageblock: a power of two from 16 to 1024. Default 512 (2 MiB with 4 KiB pages).</summary>
    public int PageblockPages { get; set; } = 512;

    /// <summary>Share of the arena, in percent, given to the movable zone (like the kernel's movablecore).
    /// The rest is the normal zone, which holds unmovable blocks: at 100 there is no normal zone and every unmovable
    /// allocation fails with OutOfMemoryException. From 0 to 100; default 75. Zones are whole max-order blocks (two
    /// pageblocks): below 100 the normal zone always gets at least one, above 0 the movable zone gets one when the
    /// arena has two or more, so a minimal arena (one max-order block) is all normal zone, where movable blocks fall
    /// back.</summary>
    public int MovableZonePercent { get; set; } = 75;

    /// <summary>Blocks up to this many bytes (rounded up to a multiple of 16, the size classes' step) live in
    /// size-class slabs; larger ones take page runs. From 1 KiB to 32 KiB; default 16 KiB. Above 16 KiB with 4 KiB
    /// pages a slab holds a single slot (its reverse map takes a few bytes more than the slot's pages).</summary>
    public int SlabThreshold { get; set; } = 16 * 1024;

    /// <summary>Advise committed pageblocks as transparent huge pages (MADV_HUGEPAGE). Default true.</summary>
    public bool UseHugePages { get; set; } = true;

    /// <summary>Use the portable back end (NativeMemory) even where mmap is available. Default false.</summary>
    public bool ForcePortableMemory { get; set; }

    /// <summary>Keep per-thread caches of free slots and handles. Default true.</summary>
    public bool PerThreadCaches { get; set; } = true;

    /// <summary>Compact a movable run's zone directly when a run cannot be allocated, before giving up
    /// (the kernel's direct compaction). Default true.</summary>
    public bool DirectCompaction { get; set; } = true;

    /// <summary>Start the background compactor when the heap is created. Default false
    /// (see <see cref="NativeHeap.StartBackgroundCompaction"/>).</summary>
    public bool BackgroundCompaction { get; set; }

    /// <summary>How often the background compactor wakes. From 1 ms to 1 hour; default 500 ms (kcompactd's HZ/2).</summary>
    public TimeSpan CompactionInterval { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Proactiveness of background compaction, 0 to 100 (the kernel's compaction_proactiveness): the pass
    /// starts when the fragmentation score exceeds the high watermark and stops at the low one,
    /// low = 100 - proactiveness. 0 turns proactive compaction off. Default 20 (watermarks 80 and 90).</summary>
    public int Proactiveness { get; set; } = 20;

    /// <summary>Bytes each phase of one background wake's pass (the consolidation, then the proactive pass) may move
    /// before it stops; its position is kept for the next wake. 0 means no limit. Default 8 MiB.</summary>
    public long CompactionBudgetBytes { get; set; } = 8L << 20;

    /// <summary>Time one background wake's pass (consolidation, then the proactive pass) may take before it stops; its
    /// position is kept for the next wake. Every wake is also cut to <see cref="CompactionSliceTime"/>, so this binds
    /// only when set below that; <see cref="TimeSpan.Zero"/> leaves the slice alone to bound it. Default 2 ms.</summary>
    public TimeSpan CompactionBudgetTime { get; set; } = TimeSpan.FromMilliseconds(2);

    /// <summary>
    /// The background compactor's second trigger, aimed at resident memory (like Redis's active defrag): when
    /// resident bytes exceed the bytes live blocks occupy (each at its size class's slot size, or its run's whole
    /// pages: rounding, which no compaction removes, does not count as waste) by more than this ratio (and by at
    /// least <see cref="WasteMinBytes"/>), it
    /// compacts in slices of <see cref="CompactionSliceTime"/> at most <see cref="CompactionCpuShare"/> of a core,
    /// returning what it empties to the OS as it goes, until the ratio falls to <see cref="WasteLowRatio"/>.
    /// While this is not 0 the heap also keeps a soft limit at <see cref="WasteLowRatio"/> times those bytes, the level a
    /// run aims at: an allocation that would commit past it first compacts in slices on its own thread (when
    /// <see cref="DirectCompaction"/> is on) and passes the soft limit only when they stop making room, so a churn's
    /// peak stays near it (native-layout.md, section 9). 0 turns both off (the kernel-style proactive trigger, <see cref="Proactiveness"/>, is separate). Default 1.1
    /// (Redis's active defrag starts at 10% too).
    /// </summary>
    public double WasteHighRatio { get; set; } = 1.1;

    /// <summary>Where a waste-driven run stops: resident / the bytes live blocks occupy (as for
    /// <see cref="WasteHighRatio"/>) at or below this; also the soft limit's ratio, which the commits of allocations
    /// respect (<see cref="WasteHighRatio"/>). At least 1, at most <see cref="WasteHighRatio"/>. Default 1.05.</summary>
    public double WasteLowRatio { get; set; } = 1.05;

    /// <summary>Waste (resident bytes minus the bytes live blocks occupy) below which the waste trigger never starts.
    /// Default 8 MiB.</summary>
    public long WasteMinBytes { get; set; } = 8L << 20;

    /// <summary>Longest slice of compaction work in one background wake (checked after every unit of work: a
    /// consolidation batch, a pageblock of the zone pass, a thread cache drained): a waste-driven run's slice, or,
    /// when no run is on, a slice of the daemon's consolidation and proactive pass (which wait while a run is on).
    /// Also the slice an allocation keeping <see cref="MemoryLimit"/> compacts in. From 50 us to 1 s; default 0.5 ms.</summary>
    public TimeSpan CompactionSliceTime { get; set; } = TimeSpan.FromMilliseconds(0.5);

    /// <summary>Share of one core a waste-driven run may use, counted in the whole process's CPU time its slices
    /// cause (the compactor thread's own, and what its barriers and frozen blocks cost the other threads): after a
    /// slice charged c of CPU that took w, the thread sleeps c / share - w (native-layout.md, section 9, "Pacing by
    /// the process's CPU"; the charge is <see cref="CompactionStatistics.BackgroundChargedCpuNanoseconds"/>).
    /// From 0.01 to 1; default 0.1.</summary>
    public double CompactionCpuShare { get; set; } = 0.1;

    /// <summary>On Linux, run the background compactor's thread under the <c>SCHED_BATCH</c> policy: its fair share
    /// of the CPU is unchanged, but when it wakes it never preempts the thread running on its core, so a mutator is
    /// never pushed off its core by a compactor slice (it could then wait up to a scheduler tick in that core's run
    /// queue while another core idles). No effect elsewhere, or when the OS refuses the policy. Default true.</summary>
    public bool BackgroundBatchScheduling { get; set; } = true;

    /// <summary>How long free memory stays resident before the background thread gives it back (hysteresis, like
    /// jemalloc's decay): a pageblock wholly free for this long is decommitted; a free run of 4 or more pages inside
    /// a pageblock still in use is purged (madvise DONTNEED) after one to two delays untouched. Zero gives free memory
    /// back at the next wakes. Default 10 s.</summary>
    public TimeSpan DecommitDelay { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The most free memory the heap keeps resident for reuse (resident bytes less live bytes), like
    /// jemalloc's and tcmalloc's caps on retained memory. Above it, the background thread gives back every wholly
    /// free pageblock and every free run of 4 or more pages at once, without waiting for <see cref="DecommitDelay"/>,
    /// and compacts (a waste-driven run, unless <see cref="WasteHighRatio"/> is 0) until the free memory it keeps is
    /// below the cap again, whatever the waste
    /// ratio. Default <see cref="long.MaxValue"/>: no cap (the waste ratio and the delay decide).</summary>
    public long RetainedBytesLimit { get; set; } = long.MaxValue;

    /// <summary>Leave per-thread caches on while compaction migrates blocks. Default false: caches are disabled and
    /// drained for the length of an explicit or direct compaction and of a memory-limit slice, because slots they hold
    /// make slab migration fail. The background compactor leaves them on either way (it drains them in steps when a
    /// pass or cycle starts). Benchmarks turn this on to show the difference.</summary>
    public bool ThreadCachesDuringMigration { get; set; }

    /// <summary>
    /// Use-after-free detection (like mimalloc's debug mode): storage is filled with a poison pattern (0xDF) when its
    /// block is freed or moved away by compaction, and checked when it is handed out again. A write through a pointer
    /// kept after <see cref="NativeHeap.Free"/>, or after its pin ended while compaction moved the block, is found at
    /// the storage's next allocation: it is counted in <see cref="HeapStatistics.UseAfterFreeDetections"/> and raised
    /// as the <see cref="NativeHeapEventSource.UseAfterFreeDetected"/> event, and the allocation goes on (it neither
    /// throws nor stops the process; the heap stays consistent, and the new block's contents are unspecified as
    /// always). Pages given back to the OS read as zero and are accepted as such. Default false. Cost: a fill of the
    /// block's slot or pages on every free and a read of them on every allocation (README, "Use-after-free
    /// detection"); off, one predictable branch on the allocate and free fast paths.
    /// </summary>
    public bool PoisonFreedMemory { get; set; }

    /// <summary>
    /// The most bytes of native memory the heap may hold at once, and so resident: committed arena memory (which
    /// bounds the arena's resident memory) plus its metadata (page descriptors, pageblock bitmap, handle table: about
    /// 1-4% of the memory in use, most of it 16 bytes per live block). 0 for no limit (the default). Like the .NET GC's <c>GCHeapHardLimit</c>: an allocation that
    /// would commit past it first gives free memory back (wholly free pageblocks are decommitted at once), then
    /// compacts in slices of <see cref="CompactionSliceTime"/> on the allocating thread (slabs consolidated, runs
    /// moved, pinned blocks skipped) until it fits, and fails (<see cref="OutOfMemoryException"/> with the reason,
    /// <see cref="NativeHeap.TryAllocate"/> false) only when live bytes do not fit under the limit or pinned and
    /// unmovable blocks hold the committed memory. The arena commits whole pageblocks: the limit is rounded down to one.
    /// At least two pageblocks.
    /// </summary>
    public long MemoryLimit { get; set; }

    /// <summary>
    /// The memory limit as a percentage of the memory available to the process: the container's limit (cgroup
    /// <c>memory.max</c>) when it has one, else the machine's memory, as the runtime reports it
    /// (<see cref="GCMemoryInfo.TotalAvailableMemoryBytes"/>, the figure the GC's <c>GCHeapHardLimitPercent</c> is
    /// taken of). 0 (the default) for none; from 1 to 100. Cannot be combined with <see cref="MemoryLimit"/>.
    /// </summary>
    public int MemoryLimitPercent { get; set; }

    /// <summary>
    /// The heap's one wall clock: every wait and every duration the heap measures is read from it — the background
    /// thread's wakes (<see cref="CompactionInterval"/>, and the sleeps that keep a waste-driven run at
    /// <see cref="CompactionCpuShare"/>, waited on the provider's timers), the free-since times behind
    /// <see cref="DecommitDelay"/>, the budgets and slices of compaction (<see cref="CompactionBudgetTime"/>,
    /// <see cref="CompactionSliceTime"/>) and the memory limit's slices. Default <see cref="System.TimeProvider.System"/>.
    /// Tests and simulations pass their own (a manual provider whose time they advance), so that the background thread
    /// wakes, and free memory ages, exactly when they say. Not read from it: the processor time the background thread
    /// is charged (CPU clocks, not a wall clock: <see cref="CpuClock"/>), the long-term pins' patience and the 200 ms
    /// bound of a Dispose's wait for calls in flight (deadlock guards, which must not wait on a clock a test may never
    /// advance).
    /// </summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    /// <summary>The CPU clocks (the process's and the calling thread's) whose readings pace the background
    /// compactor; null (the default) for the OS's. Tests pass scripted ones, as they pass a
    /// <see cref="TimeProvider"/>.</summary>
    internal Os.CpuClock? CpuClock { get; set; }

    /// <summary>The limit these options set, in bytes: <see cref="MemoryLimit"/>, or <see cref="MemoryLimitPercent"/>
    /// of the memory available to the process; 0 for none.</summary>
    internal long EffectiveMemoryLimit() =>
        MemoryLimit != 0 ? MemoryLimit
        : MemoryLimitPercent != 0 ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 100 * MemoryLimitPercent
        : 0;

    internal HeapOptions Clone() => (HeapOptions)MemberwiseClone();

    internal void Validate()
    {
        if (PageSize < 4096 || PageSize > 65536 || !IsPowerOfTwo(PageSize))
            throw new ArgumentException($"PageSize must be a power of two from 4096 to 65536; it was {PageSize}.", nameof(PageSize));
        if (PageblockPages < 16 || PageblockPages > 1024 || !IsPowerOfTwo(PageblockPages))
            throw new ArgumentException($"PageblockPages must be a power of two from 16 to 1024; it was {PageblockPages}.", nameof(PageblockPages));
        if (MovableZonePercent < 0 || MovableZonePercent > 100)
            throw new ArgumentException($"MovableZonePercent must be from 0 to 100; it was {MovableZonePercent}.", nameof(MovableZonePercent));
        if (SlabThreshold < 1024 || SlabThreshold > 32 * 1024)
            throw new ArgumentException($"SlabThreshold must be from 1024 to 32768; it was {SlabThreshold}.", nameof(SlabThreshold));
        long maxOrderBytes = 2L * PageSize * PageblockPages;
        // Page indices are ints: at most int.MaxValue pages, in whole max-order blocks (zones are made of them). Rounding
        // down leaves a max-order block of headroom, so page + (1 << order) stays below 2^31 for any page of the arena.
        long maxArena = Math.Min(1L << 46, int.MaxValue / (2L * PageblockPages) * maxOrderBytes);
        if (ArenaBytes < maxOrderBytes || ArenaBytes > maxArena)
            throw new ArgumentException($"ArenaBytes must be from {maxOrderBytes} (two pageblocks) to {maxArena} for this page size; it was {ArenaBytes}.", nameof(ArenaBytes));
        if (Proactiveness < 0 || Proactiveness > 100)
            throw new ArgumentException($"Proactiveness must be from 0 to 100; it was {Proactiveness}.", nameof(Proactiveness));
        if (CompactionInterval < TimeSpan.FromMilliseconds(1) || CompactionInterval > TimeSpan.FromHours(1))
            throw new ArgumentException($"CompactionInterval must be from 1 ms to 1 hour; it was {CompactionInterval}.", nameof(CompactionInterval));
        if (WasteHighRatio != 0 && (double.IsNaN(WasteHighRatio) || WasteHighRatio < 1 || WasteHighRatio > 1000))
            throw new ArgumentException($"WasteHighRatio must be 0 (off) or from 1 to 1000; it was {WasteHighRatio}.", nameof(WasteHighRatio));
        if (double.IsNaN(WasteLowRatio) || WasteLowRatio < 1 || (WasteHighRatio != 0 && WasteLowRatio > WasteHighRatio))
            throw new ArgumentException($"WasteLowRatio must be from 1 to WasteHighRatio; it was {WasteLowRatio}.", nameof(WasteLowRatio));
        if (WasteMinBytes < 0)
            throw new ArgumentException($"WasteMinBytes must not be negative; it was {WasteMinBytes}.", nameof(WasteMinBytes));
        if (CompactionSliceTime < TimeSpan.FromMicroseconds(50) || CompactionSliceTime > TimeSpan.FromSeconds(1))
            throw new ArgumentException($"CompactionSliceTime must be from 50 us to 1 s; it was {CompactionSliceTime}.", nameof(CompactionSliceTime));
        if (double.IsNaN(CompactionCpuShare) || CompactionCpuShare < 0.01 || CompactionCpuShare > 1)
            throw new ArgumentException($"CompactionCpuShare must be from 0.01 to 1; it was {CompactionCpuShare}.", nameof(CompactionCpuShare));
        if (CompactionBudgetBytes < 0)
            throw new ArgumentException($"CompactionBudgetBytes must not be negative; it was {CompactionBudgetBytes}.", nameof(CompactionBudgetBytes));
        if (CompactionBudgetTime < TimeSpan.Zero)
            throw new ArgumentException($"CompactionBudgetTime must not be negative; it was {CompactionBudgetTime}.", nameof(CompactionBudgetTime));
        if (DecommitDelay < TimeSpan.Zero)
            throw new ArgumentException($"DecommitDelay must not be negative; it was {DecommitDelay}.", nameof(DecommitDelay));
        if (MemoryLimit < 0 || (MemoryLimit != 0 && MemoryLimit < 2L * PageSize * PageblockPages))
            throw new ArgumentException($"MemoryLimit must be 0 (none) or at least two pageblocks ({2L * PageSize * PageblockPages} bytes); it was {MemoryLimit}.", nameof(MemoryLimit));
        if (MemoryLimitPercent < 0 || MemoryLimitPercent > 100)
            throw new ArgumentException($"MemoryLimitPercent must be from 0 (none) to 100; it was {MemoryLimitPercent}.", nameof(MemoryLimitPercent));
        if (MemoryLimit != 0 && MemoryLimitPercent != 0)
            throw new ArgumentException("MemoryLimit and MemoryLimitPercent cannot both be set.", nameof(MemoryLimitPercent));
        if (TimeProvider is null)
            throw new ArgumentException("TimeProvider must not be null.", nameof(TimeProvider));
        if (RetainedBytesLimit < 0)
            throw new ArgumentException($"RetainedBytesLimit must not be negative; it was {RetainedBytesLimit}.", nameof(RetainedBytesLimit));
    }

    private static bool IsPowerOfTwo(int v) => v > 0 && (v & (v - 1)) == 0;
}
