using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>Which OS's semantics an <see cref="IOsMemory"/> has (what <see cref="ArenaMemory"/> calls to decommit and
/// whether a decommitted range stays accessible).</summary>
internal enum OsBackEnd
{
    /// <summary>mmap/mprotect/madvise: a decommit is MADV_DONTNEED, the range stays read-write and reads back as zero;
    /// committing it again needs no call.</summary>
    Linux,
    /// <summary>VirtualAlloc/VirtualFree: a decommit is VirtualFree(MEM_DECOMMIT), the range becomes inaccessible and
    /// committing it again is VirtualAlloc(MEM_COMMIT) (zeroed pages).</summary>
    Windows,
}

/// <summary>The advice <see cref="IOsMemory.Advise"/> passes to madvise.</summary>
internal enum OsAdvice
{
    /// <summary>MADV_DONTNEED: drop the pages (they read back as zero); the range stays mapped.</summary>
    DontNeed,
    /// <summary>MADV_HUGEPAGE: back the range with transparent huge pages where possible.</summary>
    HugePage,
    /// <summary>MADV_NOHUGEPAGE: keep the range in small pages (splits the mapping around it).</summary>
    NoHugePage,
}

/// <summary>
/// The virtual-memory calls the allocator makes on Linux, one method per system call, each returning what the OS
/// said: 0 or the errno. <see cref="ArenaMemory"/> and <see cref="MetadataMemory"/> call nothing else, so a heap built
/// over another implementation (tests hand one to the heap's internal constructor) sees every refusal the kernel
/// could give, at the call that would get it (native-layout.md, "The OS layer and fault injection"). Every call here
/// is on a slow path (reservation, a pageblock's first commit, decommit, purge, advice, unmap); the fast paths make
/// none. Implementations must be thread-safe: zones commit and purge concurrently.
/// </summary>
internal interface IOsMemory
{
    /// <summary>mmap(NULL, <paramref name="bytes"/>, PROT_NONE or PROT_READ|PROT_WRITE,
    /// MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE): the address, or 0 with <paramref name="errno"/> set.</summary>
    nint Map(nuint bytes, bool readWrite, out int errno);

    /// <summary>mprotect to PROT_READ|PROT_WRITE (<paramref name="readWrite"/>) or PROT_NONE: 0 or the errno.</summary>
    int Protect(nint address, nuint bytes, bool readWrite);

    /// <summary>madvise: 0 or the errno.</summary>
    int Advise(nint address, nuint bytes, OsAdvice advice);

    /// <summary>munmap: 0 or the errno.</summary>
    int Unmap(nint address, nuint bytes);

    /// <summary>The semantics of this layer's calls (a test's layer that wraps the real one reports the real one's).</summary>
    OsBackEnd BackEnd => OsBackEnd.Linux;
}

/// <summary>Chooses the OS layer at run time (native-layout.md, section 1, "The OS layer and fault injection").</summary>
internal static class OsMemory
{
    /// <summary>The real layer of this OS: <see cref="WindowsOsMemory"/> where <see cref="OperatingSystem.IsWindows"/>,
    /// else <see cref="LinuxOsMemory"/> (used only where <see cref="IsNative"/>: elsewhere the portable back end
    /// makes no call).</summary>
    public static readonly IOsMemory Default = OperatingSystem.IsWindows() ? WindowsOsMemory.Instance : LinuxOsMemory.Instance;

    /// <summary>True where a native back end exists (Linux: mmap; Windows: VirtualAlloc); elsewhere (macOS, FreeBSD)
    /// the arena and metadata come from <see cref="NativeMemory"/> and nothing is given back through the OS.</summary>
    public static readonly bool IsNative = OperatingSystem.IsLinux() || OperatingSystem.IsWindows();
}

/// <summary>The real calls: <see cref="LinuxMemory"/>'s P/Invokes, their errno read right after each.</summary>
internal sealed class LinuxOsMemory : IOsMemory
{
    /// <summary>The one instance every heap uses unless a test hands it another.</summary>
    public static readonly LinuxOsMemory Instance = new();

    private LinuxOsMemory() { }

    public nint Map(nuint bytes, bool readWrite, out int errno)
    {
        nint p = LinuxMemory.mmap(0, bytes, readWrite ? LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE : LinuxMemory.PROT_NONE,
            LinuxMemory.MAP_PRIVATE | LinuxMemory.MAP_ANONYMOUS | LinuxMemory.MAP_NORESERVE, -1, 0);
        if (p == LinuxMemory.MAP_FAILED)
        {
            errno = Marshal.GetLastPInvokeError();
            return 0;
        }
        errno = 0;
        return p;
    }

    public int Protect(nint address, nuint bytes, bool readWrite) =>
        Result(LinuxMemory.mprotect(address, bytes, readWrite ? LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE : LinuxMemory.PROT_NONE));

    public int Advise(nint address, nuint bytes, OsAdvice advice) =>
        Result(LinuxMemory.madvise(address, bytes, advice switch
        {
            OsAdvice.DontNeed => LinuxMemory.MADV_DONTNEED,
            OsAdvice.HugePage => LinuxMemory.MADV_HUGEPAGE,
            _ => LinuxMemory.MADV_NOHUGEPAGE,
        }));

    public int Unmap(nint address, nuint bytes) => Result(LinuxMemory.munmap(address, bytes));

    /// <summary>0 on success, else the errno the call left (read before anything else can overwrite it).</summary>
    private static int Result(int rc) => rc == 0 ? 0 : Math.Max(1, Marshal.GetLastPInvokeError());
}

/// <summary>Words for an errno (a Win32 error code under Windows) in exception and assertion messages.</summary>
internal static class OsError
{
    /// <summary>"errno 12, Cannot allocate memory" (Linux) or "error 8, Not enough memory resources are available to
    /// process this command." (Windows): the number and the OS's words for it.</summary>
    public static string Describe(int errno) =>
        $"{(OperatingSystem.IsWindows() ? "error" : "errno")} {errno}, {Marshal.GetPInvokeErrorMessage(errno)}";
}
