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
    /// <summary>Decommitted: its pages were given back (not resident, they read back as zero) but the range stays
    /// readable and writable, so committing it again is bookkeeping only.</summary>
    Decommitted,
}

/// <summary>
/// A reserved range of virtual memory that is committed and decommitted one pageblock at a time.
/// </summary>
/// <remarks>
/// Two back ends (native-layout.md, "The arena"):
/// <list type="bullet">
/// <item><b>Linux</b>: the range is reserved with <c>mmap(PROT_NONE, MAP_NORESERVE)</c>, so reserving far more than RAM
/// costs nothing (with huge pages on, the whole range is advised <c>MADV_HUGEPAGE</c> once, so that committed
/// pageblocks differ from reserved ones by their protection alone). The first commit of a pageblock is
/// <c>mprotect(READ|WRITE)</c>, the only protection change a pageblock ever gets; a decommit is
/// <c>madvise(MADV_DONTNEED)</c> alone, and a later commit of a decommitted pageblock needs no system call.</item>
/// <item><b>Portable</b>: one <see cref="NativeMemory.AlignedAlloc"/> of the whole range; commit and decommit only do
/// the bookkeeping (the C runtime decides residency).</item>
/// </list>
/// What "decommitted" means: the pageblock's resident memory went back to the OS at once (its pages read back as
/// zero), and it is no longer counted as committed; but the range stays mapped read-write, and under
/// <c>vm.overcommit_memory=2</c> it keeps its commit charge. Why not <c>mprotect(PROT_NONE)</c> as well: each
/// protection change in the middle of the mapping splits it, and decommitting scattered pageblocks would split it
/// past <c>vm.max_map_count</c> (65,530 by default), after which every <c>mmap</c> of the process fails and the
/// runtime aborts. With protection changed only from none to read-write, and neighbouring commits merging into one
/// mapping, the arena holds at most one mapping per run of pageblocks ever committed, plus one per run never
/// committed; decommits never add one.
/// A refused commit fails the allocation that needed it (<see cref="CommitFailures"/>); a refused decommit or purge
/// leaves the memory committed, resident and accounted as before (<see cref="DecommitFailures"/>). Neither throws.
/// Thread safety: <see cref="Commit"/>, <see cref="Decommit"/> and <see cref="Purge"/> are called with the owning zone's
/// lock held, for pageblocks of that zone only, so two calls never race on one pageblock. The counters are updated
/// with interlocked adds because two zones may commit at the same time.
/// </remarks>
internal sealed unsafe partial class ArenaMemory : IDisposable
{
    private readonly bool _linux;
    private readonly nuint _reservedBytes;
    private readonly nuint _pageblockBytes;
    private readonly PageblockMemory[] _state; // per pageblock; written under the zone lock of that pageblock
    private nint _rawBase;
    private long _committedBytes;
    private long _decommittedBytes;
    private long _purgedBytes;
    private long _commits;
    private long _commitFailures;
    private long _decommitFailures;

    public ArenaMemory(nuint reservedBytes, nuint pageblockBytes, bool hugePages, bool forcePortable)
    {
        _reservedBytes = reservedBytes;
        _pageblockBytes = pageblockBytes;
        _state = new PageblockMemory[(int)(reservedBytes / pageblockBytes)];
        _linux = OperatingSystem.IsLinux() && !forcePortable;
        if (_linux)
        {
            // Over-reserve by one pageblock so the base can be aligned to a pageblock (2 MiB by default), which lets
            // the kernel back each committed pageblock with one transparent huge page.
            nuint length = reservedBytes + pageblockBytes;
            nint p = LinuxMemory.mmap(0, length, LinuxMemory.PROT_NONE,
                LinuxMemory.MAP_PRIVATE | LinuxMemory.MAP_ANONYMOUS | LinuxMemory.MAP_NORESERVE, -1, 0);
            if (p == LinuxMemory.MAP_FAILED)
                throw new OutOfMemoryException($"mmap could not reserve {reservedBytes} bytes of address space (errno {Marshal.GetLastPInvokeError()}).");
            _rawBase = p;
            Base = (nint)(((nuint)p + pageblockBytes - 1) & ~(pageblockBytes - 1));
            // Advice only, for the whole range at once (advising each commit would set the flag on a part of the
            // mapping, and a part that differs in flags cannot merge with its neighbours). A kernel without THP
            // refuses it (EINVAL); the heap then works with small pages, so the result is deliberately ignored.
            if (hugePages) _ = LinuxMemory.madvise(p, length, LinuxMemory.MADV_HUGEPAGE);
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

    public bool IsLinux => _linux;
    public long ReservedBytes => (long)_reservedBytes;
    public long CommittedBytes => Volatile.Read(ref _committedBytes);
    public long DecommittedBytes => Volatile.Read(ref _decommittedBytes);
    public long PurgedBytes => Volatile.Read(ref _purgedBytes);
    /// <summary>Commits the OS refused (each failed an allocation).</summary>
    public long CommitFailures => Volatile.Read(ref _commitFailures);
    /// <summary>Decommits and purges the OS refused (the memory stayed committed and resident).</summary>
    public long DecommitFailures => Volatile.Read(ref _decommitFailures);

    /// <summary>Pageblock commits so far (each a pageblock going from reserved or decommitted to committed).</summary>
    public long Commits => Volatile.Read(ref _commits);

    /// <summary>True when <paramref name="pageblock"/> is committed. Exact under the zone lock; lock-free callers get
    /// a hint (the state changes only under the zone lock).</summary>
    public bool IsCommitted(int pageblock) => Volatile.Read(ref Unsafe.As<PageblockMemory, byte>(ref _state[pageblock])) == (byte)PageblockMemory.Committed;

    /// <summary>Makes pageblock <paramref name="pageblock"/> usable: readable, writable and counted as committed.
    /// Caller holds the zone lock.</summary>
    /// <returns>false when the OS refuses (the caller turns that into an allocation failure).</returns>
    public bool Commit(int pageblock)
    {
        PageblockMemory state = _state[pageblock];
        if (state == PageblockMemory.Committed) return true;
        if (FailNextCommit) { FailNextCommit = false; Interlocked.Increment(ref _commitFailures); return false; }
        // A decommitted pageblock is still mapped read-write: only the first commit changes the protection.
        if (_linux && state == PageblockMemory.Reserved
            && LinuxMemory.mprotect(AddressOf(pageblock), _pageblockBytes, LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE) != 0)
        {
            Interlocked.Increment(ref _commitFailures);
            return false;
        }
        _state[pageblock] = PageblockMemory.Committed;
        Interlocked.Add(ref _committedBytes, (long)_pageblockBytes);
        Interlocked.Increment(ref _commits);
        return true;
    }

    /// <summary>
    /// Returns a wholly free, committed pageblock's memory to the OS (madvise MADV_DONTNEED): resident memory falls at
    /// once, the range stays readable and writable and reads back as zero. Caller holds the zone lock.
    /// </summary>
    /// <returns>true when the pageblock was decommitted; false when it was not committed, or when the OS refused
    /// (counted in <see cref="DecommitFailures"/>; the pageblock then stays committed and accounted).</returns>
    public bool Decommit(int pageblock)
    {
        if (_state[pageblock] != PageblockMemory.Committed) return false;
        if (!DropPages(AddressOf(pageblock), _pageblockBytes)) return false;
        _state[pageblock] = PageblockMemory.Decommitted;
        Interlocked.Add(ref _committedBytes, -(long)_pageblockBytes);
        Interlocked.Add(ref _decommittedBytes, (long)_pageblockBytes);
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
        if (!DropPages(address, bytes) || !_linux) return false;
        Interlocked.Add(ref _purgedBytes, (long)bytes);
        return true;
    }

    /// <summary>MADV_DONTNEED on the Linux back end, bookkeeping only on the portable one. False (and counted) when
    /// the OS refused, or when a test asked for the next one to fail.</summary>
    private bool DropPages(nint address, nuint bytes)
    {
        if (FailNextDecommit)
        {
            FailNextDecommit = false;
            Interlocked.Increment(ref _decommitFailures);
            return false;
        }
        if (_linux && LinuxMemory.madvise(address, bytes, LinuxMemory.MADV_DONTNEED) != 0)
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
        if (_linux)
        {
            // Unmapping the whole mapping cannot split one, so it fails only on arguments that are wrong (EINVAL).
            int unmapped = LinuxMemory.munmap(p, _reservedBytes + _pageblockBytes);
            Debug.Assert(unmapped == 0, $"munmap of the arena failed (errno {Marshal.GetLastPInvokeError()})");
        }
        else
        {
            NativeMemory.AlignedFree((void*)p);
        }
    }
}
