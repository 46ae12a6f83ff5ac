using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// A reserved range of virtual memory that is committed and decommitted one pageblock at a time.
/// </summary>
/// <remarks>
/// Two back ends (native-layout.md, "OS memory"):
/// <list type="bullet">
/// <item><b>Linux</b>: the range is reserved with <c>mmap(PROT_NONE, MAP_NORESERVE)</c>, so reserving far more than RAM
/// costs nothing; a commit is <c>mprotect(READ|WRITE)</c> plus <c>madvise(MADV_HUGEPAGE)</c>; a decommit is
/// <c>madvise(MADV_DONTNEED)</c> (resident memory falls at once, pages read back as zero) plus <c>mprotect(PROT_NONE)</c>.</item>
/// <item><b>Portable</b>: one <see cref="NativeMemory.AlignedAlloc"/> of the whole range; commit and decommit only do
/// the bookkeeping (the C runtime decides residency).</item>
/// </list>
/// Thread safety: <see cref="Commit"/> and <see cref="Decommit"/> are called with the owning zone's lock held, for
/// pageblocks of that zone only, so two calls never race on one pageblock. The counters are updated with interlocked
/// adds because two zones may commit at the same time.
/// </remarks>
internal sealed unsafe class ArenaMemory : IDisposable
{
    private readonly bool _linux;
    private readonly bool _hugePages;
    private readonly nuint _reservedBytes;
    private readonly nuint _pageblockBytes;
    private readonly byte[] _committed; // one flag per pageblock; written under the zone lock of that pageblock
    private nint _rawBase;
    private long _committedBytes;
    private long _decommittedBytes;
    private long _commitFailures;

    /// <summary>For tests: when set, the next commit fails as if the OS refused it.</summary>
    internal volatile bool FailNextCommit;

    public ArenaMemory(nuint reservedBytes, nuint pageblockBytes, bool hugePages, bool forcePortable)
    {
        _reservedBytes = reservedBytes;
        _pageblockBytes = pageblockBytes;
        _hugePages = hugePages;
        _committed = new byte[(int)(reservedBytes / pageblockBytes)];
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
    public long CommitFailures => Volatile.Read(ref _commitFailures);

    public bool IsCommitted(int pageblock) => _committed[pageblock] != 0;

    /// <summary>Makes pageblock <paramref name="pageblock"/> readable and writable. Caller holds the zone lock.</summary>
    /// <returns>false when the OS refuses (the caller turns that into an allocation failure).</returns>
    public bool Commit(int pageblock)
    {
        if (_committed[pageblock] != 0) return true;
        if (FailNextCommit) { FailNextCommit = false; Interlocked.Increment(ref _commitFailures); return false; }
        nint addr = Base + (nint)((nuint)pageblock * _pageblockBytes);
        if (_linux)
        {
            if (LinuxMemory.mprotect(addr, _pageblockBytes, LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE) != 0)
            {
                Interlocked.Increment(ref _commitFailures);
                return false;
            }
            // Advice only: a kernel without THP, or with THP "never", returns an error we can ignore.
            if (_hugePages) LinuxMemory.madvise(addr, _pageblockBytes, LinuxMemory.MADV_HUGEPAGE);
        }
        _committed[pageblock] = 1;
        Interlocked.Add(ref _committedBytes, (long)_pageblockBytes);
        return true;
    }

    /// <summary>Returns a wholly free pageblock's memory to the OS. Caller holds the zone lock.</summary>
    public void Decommit(int pageblock)
    {
        if (_committed[pageblock] == 0) return;
        nint addr = Base + (nint)((nuint)pageblock * _pageblockBytes);
        if (_linux)
        {
            LinuxMemory.madvise(addr, _pageblockBytes, LinuxMemory.MADV_DONTNEED);
            LinuxMemory.mprotect(addr, _pageblockBytes, LinuxMemory.PROT_NONE);
        }
        _committed[pageblock] = 0;
        Interlocked.Add(ref _committedBytes, -(long)_pageblockBytes);
        Interlocked.Add(ref _decommittedBytes, (long)_pageblockBytes);
    }

    /// <summary>
    /// Drops the contents of free pages inside a committed pageblock (madvise MADV_DONTNEED): resident memory falls,
    /// the range stays readable and writable and reads back as zero. Caller holds the zone lock and owns the range
    /// (free pages: no block lives there, no metadata either). A no-op on the portable back end.
    /// </summary>
    public void Purge(nint address, nuint bytes)
    {
        if (!_linux) return;
        LinuxMemory.madvise(address, bytes, LinuxMemory.MADV_DONTNEED);
        Interlocked.Add(ref _purgedBytes, (long)bytes);
    }

    private long _purgedBytes;
    public long PurgedBytes => Volatile.Read(ref _purgedBytes);

    public void Dispose()
    {
        nint p = Interlocked.Exchange(ref _rawBase, 0);
        if (p == 0) return;
        if (_linux) LinuxMemory.munmap(p, _reservedBytes + _pageblockBytes);
        else NativeMemory.AlignedFree((void*)p);
    }
}
