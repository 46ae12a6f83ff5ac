using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The P/Invoke surface of the Windows back end: VirtualAlloc, VirtualFree and DiscardVirtualMemory from
/// kernel32, and GetThreadTimes for <see cref="ThreadCpuClock"/>. Thin, unchecked wrappers;
/// <see cref="WindowsOsMemory"/> interprets the results (native-layout.md, section 1, "The Windows back end").
/// </summary>
internal static partial class WindowsMemory
{
    internal const uint MEM_COMMIT = 0x1000;
    internal const uint MEM_RESERVE = 0x2000;
    internal const uint MEM_RESET = 0x80000;
    internal const uint MEM_DECOMMIT = 0x4000;
    internal const uint MEM_RELEASE = 0x8000;
    internal const uint PAGE_NOACCESS = 0x01;
    internal const uint PAGE_READWRITE = 0x04;

    /// <summary>ERROR_NOT_ENOUGH_MEMORY: the error a refusal reports when the OS set none.</summary>
    internal const int ERROR_NOT_ENOUGH_MEMORY = 8;

    [LibraryImport("kernel32", SetLastError = true)]
    internal static partial nint VirtualAlloc(nint address, nuint size, uint allocationType, uint protect);

    [LibraryImport("kernel32", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    internal static partial bool VirtualFree(nint address, nuint size, uint freeType);

    /// <summary>Windows 8.1 and later: drops the pages' contents (undefined afterwards) and their residency, keeps the
    /// commit. Returns a Win32 error code (0: success).</summary>
    [LibraryImport("kernel32")]
    internal static partial int DiscardVirtualMemory(nint address, nuint size);

    [LibraryImport("kernel32")]
    internal static partial nint GetCurrentThread();

    [LibraryImport("kernel32")]
    [return: MarshalAs(UnmanagedType.Bool)]
    internal static partial bool GetThreadTimes(nint thread, out long creation, out long exit, out long kernel, out long user);
}
