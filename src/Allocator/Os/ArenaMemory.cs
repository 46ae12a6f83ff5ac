using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;

namespace Compaction.Allocator.Os;

/// <summary>What one pageblock of the arena is, as far as the OS is concerned (<see cref="ArenaMemory"/>).</summary>
internal enum PageblockMemory : byte
{
    /// <summary>Reserved only: <c>PROT_NONE</c>, never committed; touching it faults.</summary>
    Reserved,
    /// <summary>Committed: readable and writable, counted in the committed bytes, resident once touched.</summary>
    Committed,
    /// <summary>Decommitted: its pages were given back (not resident, they read back as zero). On Linux the range
    /// stays readable and writable, so committing it again is bookkeeping only; on Windows (MEM_DECOMMIT) it is
    /// inaccessible until committed again with a call.</summary>
    Decommitted,
}

/// <summary>
/// A reserved range of virtual memory that is committed and decommitted one pageblock at a time.
/// </summary>
/// <remarks>
/// Three back ends (native-layout.md, "The arena" and "The Windows back end"), chosen at run time:
/// <list type="bullet">
/// <item><b>Linux</b>: the range is reserved with <c>mmap(PROT_NONE, MAP_NORESERVE)</c>, so reserving far more than RAM
/// costs nothing (with huge pages on, the whole range is advised <c>MADV_HUGEPAGE</c> once, so that committed
/// pageblocks differ from reserved ones by their protection alone). The first commit of a pageblock is
/// <c>mprotect(READ|WRITE)</c>, the only protection change a pageblock ever gets; a decommit is
/// <c>madvise(MADV_DONTNEED)</c> alone, and a later commit of a decommitted pageblock needs no system call.</item>
/// <item><b>Windows</b> (<see cref="OperatingSystem.IsWindows"/>, <see cref="WindowsOsMemory"/>): the range is reserved
/// with <c>VirtualAlloc(MEM_RESERVE)</c>; every commit of a pageblock is <c>VirtualAlloc(MEM_COMMIT)</c>, a decommit
/// <c>VirtualFree(MEM_DECOMMIT)</c> (the pages leave the working set and the commit charge, and the pageblock is
/// inaccessible until its next commit), a purge <c>DiscardVirtualMemory</c> (the commit stays); no large pages.</item>
/// <item><b>Portable</b> (other systems, or <see cref="HeapOptions.ForcePortableMemory"/>): one
/// <see cref="NativeMemory.AlignedAlloc"/> of the whole range; commit and decommit only do the bookkeeping (the C
/// runtime decides residency).</item>
/// </list>
/// What "decommitted" means: the pageblock's resident memory went back to the OS at once (its pages read back as
/// zero), and it is no longer counted as committed; but the range stays mapped read-write, and under
/// <c>vm.overcommit_memory=2</c> it keeps its commit charge. Why not <c>mprotect(PROT_NONE)</c> as well: each
/// protection change in the middle of the mapping splits it, and decommitting scattered pageblocks would split it
/// past <c>vm.max_map_count</c> (65,530 by default), after which every <c>mmap</c> of the process fails and the
/// runtime aborts. With protection changed only from none to read-write, and neighbouring commits merging into one
/// mapping, the arena holds at most one mapping per run of pageblocks ever committed, plus one per run never
/// committed; decommits never add one.
/// On Linux and Windows every system call goes through the <see cref="IOsMemory"/> the heap was built with (the real one, or a
/// test's that refuses chosen calls).
/// A refused commit fails the allocation that needed it (<see cref="CommitFailures"/>); a refused decommit or purge
/// leaves the memory committed, resident and accounted as before (<see cref="DecommitFailures"/>). Neither throws.
/// Thread safety: <see cref="Commit"/>, <see cref="Decommit"/> and <see cref="Purge"/> are called with the owning zone's
/// lock held, for pageblocks of that zone only, so two calls never race on one pageblock. The counters are updated
/// with interlocked adds because two zones may commit at the same time.
/// </remarks>
internal sealed unsafe class ArenaMemory : IDisposable
{
    private readonly IOsMemory _os;                // every system call goes through it (native-layout.md, section 1)
    private readonly bool _native;             // a native back end (Linux or Windows): calls go through _os
    private readonly bool _windows;            // the Windows back end: a decommit revokes access, a recommit is a call
    private readonly bool _clearFirstCommit;   // portable back end only: zero a pageblock at its first commit
    private readonly nuint _reservedBytes;
    private readonly nuint _pageblockBytes;
    private readonly PageblockMemory[] _state; // per pageblock; written under the zone lock of that pageblock
    private nint _rawBase;
    private long _committedBytes;
    private long _chargedBytes;                // committed bytes plus the metadata charged to the limit: what the limit bounds
    private long _descriptorBytesPerPageblock; // metadata a pageblock's first commit makes resident (its page descriptors)
    private long _decommittedBytes;
    private long _purgedBytes;
    private long _commits;
    private long _commitFailures;
    private long _decommitFailures;
    private long _limitBytes;                  // committed bytes may not pass it; long.MaxValue: no limit
    private long _limitRefusals;               // commits refused because they would have passed it
    private long _softLimitBytes = long.MaxValue;   // commits past it are refused unless the thread may pass it
    private long _softLimitRefusals;

    // Set by the allocation paths (never by compaction, long-term pins or the reclaimer) while they allocate for a
    // caller: only those commits respect the soft limit, and only those can make room and retry.
    [ThreadStatic] private static bool t_softLimitApplies;
    [ThreadStatic] private static bool t_limitRefused;   // this thread's last refusal was a limit's (not the OS's), not yet taken

    // Small-page pageblocks (see UseSmallPages). Flips are rare (a purge in a pageblock still huge, a decommit of a
    // small-page one), so one lock serialises them with the island count; it is the innermost lock (zone lock, then
    // this one) and nothing is called under it but madvise.
    private readonly bool _hugePages;
    private readonly bool[] _smallPages;       // per pageblock: advised MADV_NOHUGEPAGE; under _adviceLock
    private readonly Lock _adviceLock = new();
    private int _islands;                      // maximal runs of small-page pageblocks: the mappings they add, halved
    private int _smallPageblocks;
    private long _adviceFailures;
    private static int s_islands;              // the same over every arena of the process: the mapping budget

    /// <summary>Runs of small-page pageblocks all arenas of the process may hold at once. Each splits the arena's
    /// mapping in up to three, so this keeps the process at most 16,384 mappings above what it had, a quarter of the
    /// default <c>vm.max_map_count</c>; past it a purge leaves the pageblock's huge-page advice alone.</summary>
    public const int MaxSmallPageIslands = 8192;

    /// <summary>Reserves the range through <paramref name="os"/> (the Linux back end) or allocates it (portable). With
    /// <c>clearFirstCommit</c>, the portable back end (whose allocation is not zeroed) zeroes each pageblock at its
    /// first commit, so that memory never handed out reads as zero on both back ends, which poisoned free memory relies
    /// on; the Linux back end's fresh pages are zero already.</summary>
    /// <exception cref="OutOfMemoryException">The OS refused the reservation; nothing is left mapped.</exception>
    public ArenaMemory(nuint reservedBytes, nuint pageblockBytes, bool hugePages, bool forcePortable, IOsMemory os, bool clearFirstCommit = false)
    {
        _os = os;
        _limitBytes = long.MaxValue;
        _clearFirstCommit = clearFirstCommit;
        _reservedBytes = reservedBytes;
        _pageblockBytes = pageblockBytes;
        _state = new PageblockMemory[(int)(reservedBytes / pageblockBytes)];
        _smallPages = new bool[_state.Length];
        _native = OsMemory.IsNative && !forcePortable;
        _windows = _native && os.BackEnd == OsBackEnd.Windows;
        if (_native)
        {
            // Over-reserve by one pageblock so the base can be aligned to a pageblock (2 MiB by default), which lets
            // the kernel back each committed pageblock with one transparent huge page.
            nuint length = reservedBytes + pageblockBytes;
            nint p = os.Map(length, readWrite: false, out int errno);
            if (p == 0)
                throw new OutOfMemoryException($"The heap could not reserve its arena: mmap refused {length} bytes of address space ({OsError.Describe(errno)}).");
            _rawBase = p;
            _hugePages = hugePages && !_windows;   // large pages are off on Windows (WindowsOsMemory)
            Base = (nint)(((nuint)p + pageblockBytes - 1) & ~(pageblockBytes - 1));
            // Advice only, for the whole range at once (advising each commit would set the flag on a part of the
            // mapping, and a part that differs in flags cannot merge with its neighbours). A kernel without THP
            // refuses it (EINVAL); the heap then works with small pages, so the result is deliberately ignored.
            if (_hugePages) _ = os.Advise(p, length, OsAdvice.HugePage);
        }
        else
        {
            void* p = NativeMemory.AlignedAlloc(reservedBytes, pageblockBytes);
            if (p == null)
                throw new OutOfMemoryException($"NativeMemory.AlignedAlloc could not provide {reservedBytes} bytes.");
            _rawBase = (nint)p;
            Base = (nint)p;
        }
    }

    /// <summary>First byte of the arena; aligned to a pageblock.</summary>
    public nint Base { get; }

    /// <summary>True on the Linux back end (mmap), false on the Windows and portable ones.</summary>
    public bool IsLinux => _native && !_windows;

    /// <summary>True on the Windows back end (VirtualAlloc).</summary>
    public bool IsWindows => _windows;
    public long ReservedBytes => (long)_reservedBytes;
    public long CommittedBytes => Volatile.Read(ref _committedBytes);
    public long DecommittedBytes => Volatile.Read(ref _decommittedBytes);
    public long PurgedBytes => Volatile.Read(ref _purgedBytes);
    /// <summary>Commits the OS refused (each failed an allocation).</summary>
    public long CommitFailures => Volatile.Read(ref _commitFailures);

    /// <summary>The most bytes that may be committed at once (the heap's memory limit); <see cref="long.MaxValue"/>
    /// for none. Committed bytes bound resident memory (a committed page is resident or not; an uncommitted one never
    /// is), so holding committed bytes at the limit holds resident memory there. Set once, before any commit.</summary>
    public long LimitBytes
    {
        get => Volatile.Read(ref _limitBytes);
        set
        {
            Debug.Assert(value > 0 && CommittedBytes == 0, "the limit is set once, before the first commit");
            _limitBytes = value;
        }
    }

    /// <summary>What <see cref="LimitBytes"/> bounds: committed arena bytes plus the native metadata the heap has made
    /// resident (<see cref="ChargeMetadata"/>: handle-table chunks, the pageblock bitmap, and the page descriptors of
    /// every pageblock committed once, which stay written when it is decommitted).</summary>
    public long ChargedBytes => Volatile.Read(ref _chargedBytes);

    /// <summary>Counts <paramref name="bytes"/> of native metadata made resident at construction (the pageblock
    /// bitmap) against <see cref="LimitBytes"/>, unchecked: the first commit meets it. Lock-free.</summary>
    public void ChargeMetadata(long bytes) => Interlocked.Add(ref _chargedBytes, bytes);

    /// <summary>Counts <paramref name="bytes"/> of metadata about to be made resident (a handle-table chunk) against
    /// <see cref="LimitBytes"/>, as <see cref="Commit"/> counts a pageblock: false (counted in
    /// <see cref="LimitRefusals"/>) when it would pass the limit, and nothing is charged. Give the bytes back with
    /// <see cref="ChargeMetadata"/> of the negative when the metadata is not made after all. Lock-free.</summary>
    public bool TryChargeMetadata(long bytes)
    {
        long limit = _limitBytes;   // written once, before any thread can reach here (see Commit)
        while (true)
        {
            long charged = Volatile.Read(ref _chargedBytes);
            if (charged > limit - bytes)
            {
                Interlocked.Increment(ref _limitRefusals);
                t_limitRefused = true;
                return false;
            }
            if (Interlocked.CompareExchange(ref _chargedBytes, charged + bytes, charged) == charged) return true;
        }
    }

    /// <summary>Metadata that the first commit of each pageblock makes resident and charges (its page descriptors). Set
    /// once, before any commit.</summary>
    public long DescriptorBytesPerPageblock
    {
        get => _descriptorBytesPerPageblock;
        set
        {
            Debug.Assert(value >= 0 && CommittedBytes == 0, "set once, before the first commit");
            _descriptorBytesPerPageblock = value;
        }
    }

    /// <summary>Commits refused because they would have taken <see cref="ChargedBytes"/> past <see cref="LimitBytes"/>.</summary>
    public long LimitRefusals => Volatile.Read(ref _limitRefusals);

    /// <summary>
    /// A limit that the commits of an allocation respect (<see cref="SoftLimitApplies"/>; a compaction's, a long-term
    /// pin's and the reclaimer's do not): the heap keeps it at live bytes times the waste ratio, so that an allocation
    /// first reuses room that freeing and compaction can make before it takes a fresh pageblock (native-layout.md,
    /// section 9, "The memory limit").
    /// <see cref="long.MaxValue"/> for none. Written racily by the heap (a stale value costs one refusal or one
    /// pageblock, never correctness).
    /// </summary>
    public long SoftLimitBytes
    {
        get => Volatile.Read(ref _softLimitBytes);
        set => Volatile.Write(ref _softLimitBytes, value);
    }

    /// <summary>Commits refused because they would have passed <see cref="SoftLimitBytes"/>.</summary>
    public long SoftLimitRefusals => Volatile.Read(ref _softLimitRefusals);

    /// <summary>True when the calling thread's last refused commit or metadata charge was refused by the memory limit or
    /// the soft limit, and no call took it since (a call clears it; an OS refusal clears it too). A flag left from an
    /// earlier allocation costs at most one bounded retry. The allocation paths ask it
    /// when no limit is in the way any more by the time they look: the refusal was a limit's, and the room it lacked
    /// may be there now.</summary>
    public static bool TakeLimitRefusal()
    {
        bool refused = t_limitRefused;
        t_limitRefused = false;
        return refused;
    }

    /// <summary>Whether the calling thread's commits respect <see cref="SoftLimitBytes"/>: a thread-local flag the
    /// heap's allocation paths set while they allocate for a caller (and clear for an allocation's last try, after its
    /// slices). Callers restore the value they found.</summary>
    public static bool SoftLimitApplies
    {
        get => t_softLimitApplies;
        set => t_softLimitApplies = value;
    }
    /// <summary>Decommits and purges the OS refused (the memory stayed committed and resident).</summary>
    public long DecommitFailures => Volatile.Read(ref _decommitFailures);

    /// <summary>Pageblocks advised to use small pages now (<see cref="UseSmallPages"/>).</summary>
    public int SmallPagePageblocks => Volatile.Read(ref _smallPageblocks);
    /// <summary>Huge-page advice the OS refused (typically at <c>vm.max_map_count</c>); each left the advice as it was.</summary>
    public long AdviceFailures => Volatile.Read(ref _adviceFailures);

    /// <summary>Pageblock commits so far (each a pageblock going from reserved or decommitted to committed).</summary>
    public long Commits => Volatile.Read(ref _commits);

    /// <summary>True when <paramref name="pageblock"/> is committed. Exact under the zone lock; lock-free callers get
    /// a hint (the state changes only under the zone lock).</summary>
    public bool IsCommitted(int pageblock) => Volatile.Read(ref Unsafe.As<PageblockMemory, byte>(ref _state[pageblock])) == (byte)PageblockMemory.Committed;

    /// <summary>True when <paramref name="pageblock"/> was committed now or once, so that what it holds is what the heap
    /// left there (a decommitted pageblock stays mapped read-write and reads as zero). A pageblock never committed is
    /// <c>PROT_NONE</c> on Linux, and on the portable back end holds whatever the C allocation held (its first commit
    /// zeroes it): either way not the heap's to check. For the validator, on a quiescent heap.</summary>
    public bool IsReadable(int pageblock) =>
        _state[pageblock] == PageblockMemory.Committed || (_state[pageblock] == PageblockMemory.Decommitted && !_windows);

    /// <summary>Makes pageblock <paramref name="pageblock"/> usable: readable, writable and counted as committed.
    /// Caller holds the zone lock.</summary>
    /// <returns>false when the OS refuses, or when the commit would take <see cref="ChargedBytes"/> past
    /// <see cref="LimitBytes"/>, or committed bytes past <see cref="SoftLimitBytes"/> on a thread that respects it (the
    /// caller turns each into an allocation failure or a retry).</returns>
    public bool Commit(int pageblock)
    {
        PageblockMemory state = _state[pageblock];
        if (state == PageblockMemory.Committed) return true;
        long bytes = (long)_pageblockBytes;
        // A pageblock's first commit also makes its page descriptors resident, for good: charged with it.
        long charge = bytes + (state == PageblockMemory.Reserved ? _descriptorBytesPerPageblock : 0);
        // The bytes are taken before the system call, so that two zones committing at once cannot both pass the
        // limit (a CAS loop on the charged bytes that never goes past it); without a limit the comparison never
        // fails. The hard limit is read plainly: it is written once, in the heap's constructor, before any thread can
        // reach a commit. The soft limit compares arena bytes only (it is a multiple of live bytes) and is checked
        // once, before the loop: two commits racing past it both go ahead, a pageblock each, which a soft limit allows.
        long limit = _limitBytes, soft = t_softLimitApplies ? Volatile.Read(ref _softLimitBytes) : long.MaxValue;
        if (Volatile.Read(ref _committedBytes) > soft - bytes)
        {
            Interlocked.Increment(ref _softLimitRefusals);
            t_limitRefused = true;
            return false;
        }
        while (true)
        {
            long charged = Volatile.Read(ref _chargedBytes);
            if (charged > limit - charge)
            {
                Interlocked.Increment(ref _limitRefusals);
                t_limitRefused = true;
                return false;
            }
            if (Interlocked.CompareExchange(ref _chargedBytes, charged + charge, charged) == charged) break;
        }
        Interlocked.Add(ref _committedBytes, bytes);
        // On Linux a decommitted pageblock is still mapped read-write: only the first commit changes the protection.
        // On Windows a decommitted pageblock is inaccessible (MEM_DECOMMIT): every commit is VirtualAlloc(MEM_COMMIT).
        if (_native && (state == PageblockMemory.Reserved || _windows)
            && _os.Protect(AddressOf(pageblock), _pageblockBytes, readWrite: true) != 0)
        {
            Interlocked.Add(ref _committedBytes, -bytes);
            Interlocked.Add(ref _chargedBytes, -charge);
            Interlocked.Increment(ref _commitFailures);
            t_limitRefused = false;   // the last refusal is the OS's: it surfaces, it is not retried
            return false;
        }
        if (!_native && _clearFirstCommit && state == PageblockMemory.Reserved) NativeMemory.Clear((void*)AddressOf(pageblock), _pageblockBytes);
        _state[pageblock] = PageblockMemory.Committed;
        Interlocked.Increment(ref _commits);
        return true;
    }

    /// <summary>True when <paramref name="pageblock"/> was advised to use small pages. A racy byte read for lock-free
    /// callers; exact under the zone lock, since only the zone's own calls flip it.</summary>
    public bool UsesSmallPages(int pageblock) => Volatile.Read(ref _smallPages[pageblock]);

    /// <summary>
    /// Keeps a sparse pageblock in small pages before free pages inside it are purged: madvise(MADV_NOHUGEPAGE) on
    /// it. Under the arena's MADV_HUGEPAGE advice, khugepaged collapses any 2 MiB range with one page still resident
    /// back into a huge page (max_ptes_none is 511 by default), making every purged page resident again within
    /// minutes (measured: RSS/live 1.16 -> 1.23 in 70 s after a release). The advice splits the mapping around the
    /// pageblock (neighbours with the same advice merge), so it is taken only within <see cref="MaxSmallPageIslands"/>
    /// over the process; past it, or when the OS refuses (counted in <see cref="AdviceFailures"/>), the pageblock
    /// stays as it was. Caller holds the zone lock. Does nothing with huge pages off or on the portable back end.
    /// </summary>
    public void UseSmallPages(int pageblock) => Advise(pageblock, small: true);

    /// <summary>Gives a small-page pageblock its huge-page advice back (madvise MADV_HUGEPAGE): when it is decommitted
    /// (its next commit starts afresh) or has become dense again (khugepaged may then collapse it; jemalloc's HPA
    /// hugifies at 95% full). Caller holds the zone lock.</summary>
    public void UseHugePages(int pageblock) => Advise(pageblock, small: false);

    private void Advise(int pb, bool small)
    {
        if (!_native || !_hugePages) return;
        lock (_adviceLock)
        {
            if (_smallPages[pb] == small) return;
            // Islands of small-page pageblocks before and after the flip: joining two neighbours removes one, a
            // lone pageblock adds one; leaving is the reverse.
            int neighbours = (pb > 0 && _smallPages[pb - 1] ? 1 : 0) + (pb + 1 < _smallPages.Length && _smallPages[pb + 1] ? 1 : 0);
            int delta = small ? 1 - neighbours : neighbours - 1;
            if (delta > 0 && Interlocked.Add(ref s_islands, delta) > MaxSmallPageIslands)
            {
                Interlocked.Add(ref s_islands, -delta);
                return;
            }
            if (_os.Advise(AddressOf(pb), _pageblockBytes, small ? OsAdvice.NoHugePage : OsAdvice.HugePage) != 0)
            {
                if (delta > 0) Interlocked.Add(ref s_islands, -delta);
                Interlocked.Increment(ref _adviceFailures);
                return;
            }
            if (delta < 0) Interlocked.Add(ref s_islands, delta);
            _islands += delta;
            Volatile.Write(ref _smallPages[pb], small);
            Volatile.Write(ref _smallPageblocks, _smallPageblocks + (small ? 1 : -1));
        }
    }

    /// <summary>
    /// Returns a wholly free, committed pageblock's memory to the OS (madvise MADV_DONTNEED): resident memory falls at
    /// once, the range stays readable and writable and reads back as zero. A small-page pageblock gets its huge-page
    /// advice back, so its next commit is a huge page again. Caller holds the zone lock.
    /// </summary>
    /// <returns>true when the pageblock was decommitted; false when it was not committed, or when the OS refused
    /// (counted in <see cref="DecommitFailures"/>; the pageblock then stays committed and accounted).</returns>
    public bool Decommit(int pageblock)
    {
        if (_state[pageblock] != PageblockMemory.Committed) return false;
        // Windows: VirtualFree(MEM_DECOMMIT) gives the pages and their commit charge back; the range is inaccessible
        // until Commit. Linux: MADV_DONTNEED (DropPages), the range stays read-write.
        if (_windows)
        {
            if (_os.Protect(AddressOf(pageblock), _pageblockBytes, readWrite: false) != 0)
            {
                Interlocked.Increment(ref _decommitFailures);
                return false;
            }
        }
        else if (!DropPages(AddressOf(pageblock), _pageblockBytes)) return false;
        _state[pageblock] = PageblockMemory.Decommitted;
        Interlocked.Add(ref _committedBytes, -(long)_pageblockBytes);
        Interlocked.Add(ref _chargedBytes, -(long)_pageblockBytes);   // its descriptors stay resident, and charged
        Interlocked.Add(ref _decommittedBytes, (long)_pageblockBytes);
        if (_smallPages[pageblock]) UseHugePages(pageblock);
        return true;
    }

    /// <summary>
    /// Drops the contents of free pages inside a committed pageblock (madvise MADV_DONTNEED): resident memory falls,
    /// the range stays readable and writable and reads back as zero. Caller holds the zone lock and owns the range
    /// (free pages: no block lives there, no metadata either).
    /// </summary>
    /// <returns>true when the pages were dropped; false on the portable back end (nothing to do) or when the OS
    /// refused (counted in <see cref="DecommitFailures"/>; the pages stay resident).</returns>
    public bool Purge(nint address, nuint bytes)
    {
        if (!_native) return false;
        // The OS drops whole pages of its own size, read at run time: an ARM64 kernel may use 16 KiB or 64 KiB pages
        // under the heap's 4 KiB ones. Only the OS pages wholly inside the run are dropped (none: nothing to do, and
        // the run stays unpurged); the run still counts as purged, its edges resident (at most two OS pages).
        nint start = (address + (nint)s_osPageMask) & ~(nint)s_osPageMask;
        nint end = (address + (nint)bytes) & ~(nint)s_osPageMask;
        if (end <= start) return false;
        if (!DropPages(start, (nuint)(end - start))) return false;
        Interlocked.Add(ref _purgedBytes, (long)bytes);
        return true;
    }

    /// <summary>The OS page size less one (<see cref="Environment.SystemPageSize"/>: 4 KiB on x64 and Windows, 4, 16 or
    /// 64 KiB on ARM64 Linux).</summary>
    private static readonly nuint s_osPageMask = (nuint)Environment.SystemPageSize - 1;

    /// <summary>MADV_DONTNEED on the Linux back end, DiscardVirtualMemory on the Windows one (the commit stays),
    /// bookkeeping only on the portable one. False (and counted) when the OS refused.</summary>
    private bool DropPages(nint address, nuint bytes)
    {
        if (_native && _os.Advise(address, bytes, OsAdvice.DontNeed) != 0)
        {
            Interlocked.Increment(ref _decommitFailures);
            return false;
        }
        return true;
    }

    private nint AddressOf(int pageblock) => Base + (nint)((nuint)pageblock * _pageblockBytes);

    public void Dispose()
    {
        nint p = Interlocked.Exchange(ref _rawBase, 0);
        if (p == 0) return;
        lock (_adviceLock)
        {
            // The unmap below removes this arena's mappings: its islands leave the process's budget.
            Interlocked.Add(ref s_islands, -_islands);
            _islands = 0;
        }
        if (_native)
        {
            // Unmapping (releasing) the whole mapping cannot split one, so it fails only on arguments that are wrong (EINVAL).
            int errno = _os.Unmap(p, _reservedBytes + _pageblockBytes);
            Debug.Assert(errno == 0, $"munmap of the arena failed ({OsError.Describe(errno)})");
        }
        else
        {
            NativeMemory.AlignedFree((void*)p);
        }
    }
}
