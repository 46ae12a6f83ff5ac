using System.Runtime.InteropServices;

namespace Compaction.Allocator.Os;

/// <summary>
/// Zeroed native memory for metadata sized by the reservation (the page-descriptor array): on Linux an anonymous
/// read-write mapping with MAP_NORESERVE, so that neither the heuristic overcommit check nor residency charges the
/// untouched part (the zones write descriptors only below their frontiers); on Windows VirtualAlloc(MEM_RESERVE |
/// MEM_COMMIT), charged to the commit limit but resident only where written (<see cref="WindowsOsMemory"/>); elsewhere
/// a zeroed native allocation. On Linux and Windows every call goes through the <see cref="IOsMemory"/> passed in (the heap's, or for the process-wide handle
/// table's reservation the real one).
/// </summary>
internal static unsafe class MetadataMemory
{
    /// <summary>Zeroed memory of <paramref name="bytes"/>; throws <see cref="OutOfMemoryException"/> when the OS refuses.</summary>
    public static void* AllocateZeroed(nuint bytes, IOsMemory os)
    {
        if (OsMemory.IsNative)
        {
            nint p = os.Map(bytes, readWrite: true, out int errno);
            if (p == 0)
                throw new OutOfMemoryException($"the OS refused {bytes} bytes of metadata ({OsError.Describe(errno)}).");
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
    public static void* Reserve(nuint bytes, IOsMemory os)
    {
        if (OsMemory.IsNative) return (void*)os.Map(bytes, readWrite: false, out _);
        return NativeMemory.AllocZeroed(bytes);
    }

    /// <summary>Makes <paramref name="bytes"/> at <paramref name="p"/>, inside a <see cref="Reserve"/>d range,
    /// readable and writable (zeroed: never touched before). False when the OS refuses (commit limit, or the split
    /// would pass vm.max_map_count).</summary>
    public static bool Commit(void* p, nuint bytes, IOsMemory os) =>
        !OsMemory.IsNative || os.Protect((nint)p, bytes, readWrite: true) == 0;

    /// <summary>Frees memory from <see cref="AllocateZeroed"/> of the same <paramref name="bytes"/>.</summary>
    public static void Free(void* p, nuint bytes, IOsMemory os)
    {
        if (p == null) return;
        if (OsMemory.IsNative) os.Unmap((nint)p, bytes);
        else NativeMemory.Free(p);
    }
}
