using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The P/Invoke surface of the core's memory: mmap, mprotect, madvise and munmap from libc (the other one is
/// <see cref="ThreadCpuClock"/>).
/// Every function here is a thin, unchecked wrapper; <see cref="ArenaMemory"/> interprets the results.
/// </summary>
internal static unsafe partial class LinuxMemory
{
    internal const int PROT_NONE = 0x0;
    internal const int PROT_READ = 0x1;
    internal const int PROT_WRITE = 0x2;
    internal const int MAP_PRIVATE = 0x02;
    internal const int MAP_ANONYMOUS = 0x20;
    internal const int MAP_NORESERVE = 0x4000;
    internal const int MADV_DONTNEED = 4;
    internal const int MADV_HUGEPAGE = 14;
    internal const int MADV_NOHUGEPAGE = 15;
    internal static readonly nint MAP_FAILED = -1;

    [LibraryImport("libc", SetLastError = true)]
    internal static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int mprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", SetLastError = true)]
    internal static partial int madvise(nint addr, nuint length, int advice);
}
