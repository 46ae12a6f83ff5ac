using System.Globalization;
using System.Text;

namespace Compaction.Allocator.Diagnostics;

/// <summary>A snapshot of a heap's memory and free lists (<see cref="NativeHeap.GetStatistics"/>).</summary>
/// <remarks>Each zone and each size class is read under its own lock, so each is self-consistent; the snapshot as a
/// whole is not atomic while other threads allocate. Live counts are sums of per-thread counters.</remarks>
public sealed class HeapStatistics
{
    internal HeapStatistics() { }

    /// <summary>Bytes requested by live blocks.</summary>
    public long LiveBytes { get; internal init; }
    /// <summary>Live blocks.</summary>
    public long LiveBlocks { get; internal init; }
    /// <summary>Bytes of the arena currently committed (read-write, possibly resident).</summary>
    public long CommittedBytes { get; internal init; }
    /// <summary>Bytes of address space reserved for the arena.</summary>
    public long ReservedBytes { get; internal init; }
    /// <summary>Bytes decommitted since the heap was created: wholly free pageblocks whose resident memory went back to
    /// the OS (the range stays mapped, and is committed again on reuse without a system call).</summary>
    public long DecommittedBytes { get; internal init; }
    /// <summary>Bytes of free pages purged (madvise DONTNEED inside pageblocks still in use) since the heap was created.</summary>
    public long PurgedBytes { get; internal init; }
    /// <summary>Bytes of free blocks purged and not reused since: still committed (in <see cref="CommittedBytes"/>) but
    /// not resident. <see cref="CommittedBytes"/> less this is what the heap keeps resident for its blocks.</summary>
    public long PurgedFreeBytes { get; internal init; }
    /// <summary>Long-term pins held now (<see cref="NativeHeap.PinLongTerm(BlockHandle)"/>).</summary>
    public long LongTermPins { get; internal init; }
    /// <summary>Movable blocks moved into unmovable memory for a long-term pin since the heap was created (each is
    /// unmovable from then on).</summary>
    public long LongTermPinMigrations { get; internal init; }
    /// <summary>Bytes those moves copied.</summary>
    public long LongTermPinBytesMoved { get; internal init; }
    /// <summary>Long-term pin calls refused (no unmovable memory left, or a block held in place too long).</summary>
    public long LongTermPinFailures { get; internal init; }
    /// <summary>Committed pageblocks kept in small pages (advised MADV_NOHUGEPAGE) because free pages inside them were
    /// purged: khugepaged would otherwise collapse them into huge pages and make the purged pages resident again.
    /// They get huge pages back when decommitted or once 95% of them is in use.</summary>
    public int SmallPagePageblocks { get; internal init; }
    /// <summary>Decommits and purges the OS refused since the heap was created. Each left its memory committed (and
    /// resident), counted in <see cref="CommittedBytes"/> and not in <see cref="DecommittedBytes"/> or
    /// <see cref="PurgedBytes"/>; a later release or trim tries again.</summary>
    public long DecommitFailures { get; internal init; }
    /// <summary>Pageblock commits the OS refused since the heap was created. Each failed the allocation (or the
    /// compaction's destination, the long-term pin's move, the cache refill) that needed it, leaving the pageblock as
    /// it was; a later allocation tries again.</summary>
    public long CommitFailures { get; internal init; }
    /// <summary>The memory limit in force (<see cref="HeapOptions.MemoryLimit"/>, rounded down to whole pageblocks),
    /// 0 for none. Committed bytes never pass it.</summary>
    public long MemoryLimit { get; internal init; }
    /// <summary>Pageblock commits the memory limit refused (each sends its allocation to free or compact memory, and
    /// to fail if that makes no room: <see cref="CompactionStatistics.LimitFailures"/>).</summary>
    public long MemoryLimitCommitRefusals { get; internal init; }
    /// <summary>Huge-page advice (madvise MADV_NOHUGEPAGE / MADV_HUGEPAGE on one pageblock) the OS refused, typically
    /// because the split would pass vm.max_map_count. Each left the pageblock's advice as it was and changed nothing
    /// else: the purge or decommit that asked for it went ahead.</summary>
    public long AdviceFailures { get; internal init; }
    /// <summary>Exceptions that ended the background compactor thread since the heap was created (each stopped it:
    /// <see cref="NativeHeap.BackgroundCompactionRunning"/> became false until
    /// <see cref="NativeHeap.StartBackgroundCompaction"/>); also reported by the <c>BackgroundFailed</c> event.</summary>
    public long BackgroundFailures { get; internal init; }
    /// <summary>The last exception that ended the background compactor thread, as "type: message"; null if none did.</summary>
    public string? LastBackgroundFailure { get; internal init; }
    /// <summary>Writes through stale pointers found since the heap was created (<see cref="HeapOptions.PoisonFreedMemory"/>;
    /// always 0 without it): each is storage that no longer held its poison when it was handed out again.</summary>
    public long UseAfterFreeDetections { get; internal init; }
    /// <summary>Times the handle table needed more entries and could not get them (the OS refused to commit a chunk
    /// of entries, or the process made every entry it may): each failed the allocation that asked, leaving the heap as
    /// it was.</summary>
    public long HandleTableGrowthFailures { get; internal init; }
    /// <summary>Native metadata: page descriptors, pageblock bitmap and handle table.</summary>
    public long MetadataBytes { get; internal init; }
    /// <summary>Page size in bytes.</summary>
    public int PageSize { get; internal init; }
    /// <summary>Pages per pageblock.</summary>
    public int PageblockPages { get; internal init; }
    /// <summary>Blocks relocated since the heap was created, and their bytes.</summary>
    public long BlocksMigrated { get; internal init; }
    /// <summary>Bytes copied by migrations.</summary>
    public long BytesMigrated { get; internal init; }
    /// <summary>Free slab slots held in per-thread caches and the depot for reuse.</summary>
    public long CachedSlots { get; internal init; }
    /// <summary>Free page runs (up to 1 MiB) held in per-thread caches and the depot for reuse.</summary>
    public long CachedRuns { get; internal init; }
    /// <summary>Compaction counters since the heap was created, by the kernel's names.</summary>
    public CompactionStatistics Compaction { get; internal init; } = new();
    /// <summary>The background compactor's score: extfrag at pageblock order of the movable zone, in percent.</summary>
    public int FragmentationScore { get; internal init; }
    /// <summary>The normal zone, then the movable zone (a zone of zero pages is left out).</summary>
    public IReadOnlyList<ZoneStatistics> Zones { get; internal init; } = [];
    /// <summary>Slab occupancy per size class and block kind (classes with no slab are left out).</summary>
    public IReadOnlyList<SlabClassStatistics> SlabClasses { get; internal init; } = [];

    /// <summary>Free page blocks per order and zone, like /proc/buddyinfo.</summary>
    public string BuddyInfo()
    {
        var sb = new StringBuilder();
        foreach (ZoneStatistics z in Zones)
        {
            sb.Append(CultureInfo.InvariantCulture, $"Zone {z.Name,-8}");
            for (int o = 0; o < z.Orders; o++) sb.Append(CultureInfo.InvariantCulture, $" {z.FreeBlocks(o, MigrateType.Unmovable) + z.FreeBlocks(o, MigrateType.Movable),6}");
            sb.AppendLine();
        }
        return sb.ToString();
    }

    /// <summary>Free page blocks per order, zone and migrate type, and pageblocks per type, like /proc/pagetypeinfo.</summary>
    public string PageTypeInfo()
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Page block order: {System.Numerics.BitOperations.Log2((uint)PageblockPages)}");
        sb.AppendLine(CultureInfo.InvariantCulture, $"Pages per block:  {PageblockPages}");
        foreach (ZoneStatistics z in Zones)
            foreach (MigrateType t in Enum.GetValues<MigrateType>())
            {
                sb.Append(CultureInfo.InvariantCulture, $"Zone {z.Name,-8} type {t,-10}");
                for (int o = 0; o < z.Orders; o++) sb.Append(CultureInfo.InvariantCulture, $" {z.FreeBlocks(o, t),6}");
                sb.AppendLine();
            }
        sb.AppendLine("Number of blocks type     Unmovable    Movable");
        foreach (ZoneStatistics z in Zones)
            sb.AppendLine(CultureInfo.InvariantCulture, $"Zone {z.Name,-8}          {z.Pageblocks(MigrateType.Unmovable),9} {z.Pageblocks(MigrateType.Movable),10}");
        return sb.ToString();
    }

    /// <inheritdoc/>
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"live {LiveBytes:N0} B in {LiveBlocks:N0} blocks; committed {CommittedBytes:N0} B of {ReservedBytes:N0} B reserved; decommitted {DecommittedBytes:N0} B; metadata {MetadataBytes:N0} B");
        sb.Append(BuddyInfo());
        sb.AppendLine(CultureInfo.InvariantCulture, $"fragmentation score {FragmentationScore}%");
        foreach (SlabClassStatistics c in SlabClasses)
            sb.AppendLine(CultureInfo.InvariantCulture, $"  slab {c.Kind,-9} {c.SlotSize,6} B: {c.Slabs,5} slabs x {c.SlotsPerSlab,4} slots ({c.PagesPerSlab} pages), {c.UsedSlots,8} used ({c.Occupancy:P0})");
        return sb.ToString();
    }
}
