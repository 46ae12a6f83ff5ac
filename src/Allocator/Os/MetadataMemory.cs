using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// Zeroed native memory for metadata sized by the reservation (the page-descriptor array): on Linux an anonymous
/// read-write mapping with MAP_NORESERVE, so that neither the heuristic overcommit check nor residency charges the
/// untouched part (the zones write descriptors only below their frontiers); elsewhere a zeroed native allocation.
/// </summary>
internal static unsafe class MetadataMemory
{
    /// <summary>Zeroed memory of <paramref name="bytes"/>; throws <see cref="OutOfMemoryException"/> when the OS refuses.</summary>
    public static void* AllocateZeroed(nuint bytes)
    {
        if (OperatingSystem.IsLinux())
        {
            nint p = LinuxMemory.mmap(0, bytes, LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE,
                LinuxMemory.MAP_PRIVATE | LinuxMemory.MAP_ANONYMOUS | LinuxMemory.MAP_NORESERVE, -1, 0);
            if (p == LinuxMemory.MAP_FAILED)
                throw new OutOfMemoryException($"mmap could not map {bytes} bytes of metadata (errno {Marshal.GetLastPInvokeError()}).");
            return (void*)p;
        }
        return NativeMemory.AllocZeroed(bytes);
    }

    /// <summary>
    /// Reserves <paramref name="bytes"/> of address space for metadata that grows in place (the flat handle table):
    /// on Linux <c>PROT_NONE</c> with MAP_NORESERVE, which no overcommit policy charges; <see cref="Commit"/> makes
    /// parts of it usable. Elsewhere the whole range is allocated zeroed at once (so keep it small there). Null when
    /// the OS refuses.
    /// </summary>
    public static void* Reserve(nuint bytes)
    {
        if (OperatingSystem.IsLinux())
        {
            nint p = LinuxMemory.mmap(0, bytes, LinuxMemory.PROT_NONE,
                LinuxMemory.MAP_PRIVATE | LinuxMemory.MAP_ANONYMOUS | LinuxMemory.MAP_NORESERVE, -1, 0);
            return p == LinuxMemory.MAP_FAILED ? null : (void*)p;
        }
        return NativeMemory.AllocZeroed(bytes);
    }

    /// <summary>Makes <paramref name="bytes"/> at <paramref name="p"/>, inside a <see cref="Reserve"/>d range,
    /// readable and writable (zeroed: never touched before). False when the OS refuses (commit limit).</summary>
    public static bool Commit(void* p, nuint bytes) =>
        !OperatingSystem.IsLinux() || LinuxMemory.mprotect((nint)p, bytes, LinuxMemory.PROT_READ | LinuxMemory.PROT_WRITE) == 0;

    /// <summary>Frees memory from <see cref="AllocateZeroed"/> of the same <paramref name="bytes"/>.</summary>
    public static void Free(void* p, nuint bytes)
    {
        if (p == null) return;
        if (OperatingSystem.IsLinux()) LinuxMemory.munmap((nint)p, bytes);
        else NativeMemory.Free(p);
    }
}
