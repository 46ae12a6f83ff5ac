using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// The Windows back end of <see cref="IOsMemory"/> (native-layout.md, section 1, "The Windows back end"). The four
/// calls keep their Linux names and meanings, mapped onto the Win32 virtual-memory calls:
/// <list type="table">
/// <item><term>Map, none</term><description>VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS): address space only, charged to
/// nobody (the arena, the handle table).</description></item>
/// <item><term>Map, read-write</term><description>VirtualAlloc(MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE): zeroed, and
/// charged to the commit limit at once although a page is resident only once touched (the page-descriptor array,
/// the handle table's directory, pin records).</description></item>
/// <item><term>Protect, read-write</term><description>VirtualAlloc(MEM_COMMIT, PAGE_READWRITE): a commit (zeroed
/// pages where they were not committed).</description></item>
/// <item><term>Protect, none</term><description>VirtualFree(MEM_DECOMMIT): the pages leave the working set and the
/// commit charge, and become inaccessible until committed again (<see cref="ArenaMemory"/> decommits this way).</description></item>
/// <item><term>Advise, DontNeed</term><description>DiscardVirtualMemory (Windows 8.1), or VirtualAlloc(MEM_RESET)
/// where it is missing or refuses: a purge that keeps the commit; the contents become undefined (in practice the old contents
/// or zero, per page, which is what the poison checks accept).</description></item>
/// <item><term>Advise, huge pages</term><description>nothing (large pages are off: they need the SeLockMemory
/// privilege and are never paged); returns 0.</description></item>
/// <item><term>Unmap</term><description>VirtualFree(MEM_RELEASE) of the whole reservation (the address Map
/// returned).</description></item>
/// </list>
/// A refusal returns the Win32 error (GetLastError), at least 1; <see cref="ArenaMemory"/> counts it exactly as it
/// counts an errno.
/// </summary>
internal sealed class WindowsOsMemory : IOsMemory
{
    /// <summary>The one instance every heap uses on Windows unless a test hands it another.</summary>
    public static readonly WindowsOsMemory Instance = new();

    private static bool s_noDiscard;   // DiscardVirtualMemory missing (before Windows 8.1): MEM_RESET instead

    private WindowsOsMemory() { }

    public OsBackEnd BackEnd => OsBackEnd.Windows;

    public nint Map(nuint bytes, bool readWrite, out int errno)
    {
        nint p = readWrite
            ? WindowsMemory.VirtualAlloc(0, bytes, WindowsMemory.MEM_RESERVE | WindowsMemory.MEM_COMMIT, WindowsMemory.PAGE_READWRITE)
            : WindowsMemory.VirtualAlloc(0, bytes, WindowsMemory.MEM_RESERVE, WindowsMemory.PAGE_NOACCESS);
        errno = p == 0 ? LastError() : 0;
        return p;
    }

    public int Protect(nint address, nuint bytes, bool readWrite)
    {
        if (readWrite)
            return WindowsMemory.VirtualAlloc(address, bytes, WindowsMemory.MEM_COMMIT, WindowsMemory.PAGE_READWRITE) != 0 ? 0 : LastError();
        return WindowsMemory.VirtualFree(address, bytes, WindowsMemory.MEM_DECOMMIT) ? 0 : LastError();
    }

    public int Advise(nint address, nuint bytes, OsAdvice advice)
    {
        if (advice != OsAdvice.DontNeed) return 0;
        if (!Volatile.Read(ref s_noDiscard))
        {
            try
            {
                if (WindowsMemory.DiscardVirtualMemory(address, bytes) == 0) return 0;
            }
            catch (EntryPointNotFoundException)
            {
                Volatile.Write(ref s_noDiscard, true);
            }
        }
        return WindowsMemory.VirtualAlloc(address, bytes, WindowsMemory.MEM_RESET, WindowsMemory.PAGE_NOACCESS) != 0 ? 0 : LastError();
    }

    public int Unmap(nint address, nuint bytes) =>
        WindowsMemory.VirtualFree(address, 0, WindowsMemory.MEM_RELEASE) ? 0 : LastError();

    /// <summary>The error the failed call left, at least 1 (a refusal must never read as success).</summary>
    private static int LastError() => Math.Max(1, Marshal.GetLastPInvokeError());
}
