using Compaction.Allocator;
using Compaction.Allocator.Os;

namespace Compaction.Tests;

/// <summary>The calls of <see cref="IOsMemory"/> that <see cref="FaultyOsMemory"/> can refuse, one per call and
/// advice. <see cref="Protect"/> is a protection to read-write, the commit of both back ends (mprotect on Linux,
/// VirtualAlloc(MEM_COMMIT) on Windows); <see cref="Revoke"/> a protection to none, which only the Windows back end
/// makes, to decommit (VirtualFree(MEM_DECOMMIT)); <see cref="DontNeed"/> is Linux's decommit and both back ends'
/// purge (madvise MADV_DONTNEED; DiscardVirtualMemory on Windows).</summary>
internal enum OsCall { Map, Protect, DontNeed, HugePage, NoHugePage, Unmap, Revoke }

/// <summary>
/// An OS layer for tests: every call goes to the real one of this OS (<see cref="OsMemory.Default"/>: Linux's mmap
/// calls, or Windows's VirtualAlloc calls) unless a rule refuses it, in which case nothing is done and the rule's
/// error comes back (<see cref="OutOfMemory"/> unless told: ENOMEM, or ERROR_NOT_ENOUGH_MEMORY under Windows), as the
/// OS would answer. Tests name the heap's operations through <see cref="CommitCall"/>, <see cref="DecommitCall"/> and
/// <see cref="PurgeCall"/>, which are different calls on the two back ends. Rules
/// choose calls by kind, by address range, by how many matching calls to let through first, and by how many to
/// refuse. <see cref="MaxMappings"/> models vm.max_map_count (Linux's limit; a test that sets it is about Linux): the
/// layer keeps the mappings (VMAs) of the ranges it mapped, split by protection and huge-page advice the way the
/// kernel splits them, and refuses with ENOMEM the Map, Protect or advice that would take their number past the limit. Thread-safe (zones commit concurrently).
/// </summary>
internal sealed class FaultyOsMemory : IOsMemory
{
    public const int ENOMEM = 12;

    /// <summary>ERROR_NOT_ENOUGH_MEMORY, the Win32 error VirtualAlloc leaves when it cannot commit.</summary>
    public const int ERROR_NOT_ENOUGH_MEMORY = 8;

    private sealed class Rule
    {
        public OsCall Call;
        public nint From, To;   // [From, To): a call whose range overlaps it matches; Map matches any range
        public int Skip, Left, Errno;
    }

    /// <summary>One mapping of the model: [Start, End) with its protection and advice, inside the mapping made by
    /// the Map call at <see cref="Region"/>.</summary>
    private record struct Vma(nint Region, nint Start, nint End, bool ReadWrite, OsAdvice? Advice);

    private readonly IOsMemory _real = OsMemory.Default;

    /// <summary>The real layer's semantics (Windows under Windows).</summary>
    public OsBackEnd BackEnd => _real.BackEnd;

    /// <summary>The error a refusal gives unless told: ENOMEM on Linux, ERROR_NOT_ENOUGH_MEMORY on Windows.</summary>
    public static int OutOfMemory { get; } = OsMemory.Default.BackEnd == OsBackEnd.Windows ? ERROR_NOT_ENOUGH_MEMORY : ENOMEM;

    /// <summary>The call that commits a pageblock (or a chunk of metadata): a protection to read-write on both back ends.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Performance", "CA1822", Justification = "named through the layer, beside DecommitCall, which depends on its back end")]
    public OsCall CommitCall => OsCall.Protect;

    /// <summary>The call that decommits a wholly free pageblock: MADV_DONTNEED on Linux, VirtualFree(MEM_DECOMMIT) (a
    /// protection to none) on Windows.</summary>
    public OsCall DecommitCall => BackEnd == OsBackEnd.Windows ? OsCall.Revoke : OsCall.DontNeed;

    /// <summary>The call that purges free pages inside a committed pageblock: MADV_DONTNEED on Linux,
    /// DiscardVirtualMemory on Windows (both an <see cref="OsAdvice.DontNeed"/>).</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Performance", "CA1822", Justification = "named through the layer, beside DecommitCall, which depends on its back end")]
    public OsCall PurgeCall => OsCall.DontNeed;

    /// <summary>Refusals of the calls that give memory back (decommits and purges; one call on Linux, two on Windows).</summary>
    public int RefusedReleases => DecommitCall == PurgeCall ? Refused(PurgeCall) : Refused(DecommitCall) + Refused(PurgeCall);

    private readonly Lock _lock = new();
    private readonly List<Rule> _rules = [];
    private readonly List<Vma> _vmas = [];              // the model's mappings, sorted by Start
    private readonly int[] _calls = new int[Enum.GetValues<OsCall>().Length];
    private readonly int[] _refused = new int[Enum.GetValues<OsCall>().Length];

    /// <summary>The most mappings the ranges this layer mapped may be split into; null for no limit.</summary>
    public int? MaxMappings { get; set; }

    /// <summary>Mappings the model holds now (ranges mapped through this layer, split by protection and advice).</summary>
    public int Mappings { get { lock (_lock) return _vmas.Count; } }

    /// <summary>Refuses <paramref name="times"/> calls of <paramref name="call"/> (after letting <paramref name="skip"/>
    /// matching ones through), those touching [<paramref name="from"/>, <paramref name="to"/>) when a range is given (<paramref name="to"/> 0: no upper bound).</summary>
    public void Refuse(OsCall call, int times = int.MaxValue, int skip = 0, nint from = 0, nint to = 0, int errno = 0)
    {
        lock (_lock) _rules.Add(new Rule { Call = call, From = from, To = to == 0 ? nint.MaxValue : to, Skip = skip, Left = times, Errno = errno == 0 ? OutOfMemory : errno });
    }

    /// <summary>Refuses calls of <paramref name="call"/> inside <paramref name="heap"/>'s arena only (not its metadata or
    /// the handle table's chunks).</summary>
    public void RefuseInArena(NativeHeap heap, OsCall call, int times = int.MaxValue, int skip = 0, int errno = 0) =>
        Refuse(call, times, skip, heap.Memory.Base, heap.Memory.Base + (nint)heap.Memory.ReservedBytes, errno);

    /// <summary>Drops every rule and the mapping limit: the OS gives memory again.</summary>
    public void Allow()
    {
        lock (_lock)
        {
            _rules.Clear();
            MaxMappings = null;
        }
    }

    /// <summary>Calls of <paramref name="call"/> made so far, refused or not.</summary>
    public int Calls(OsCall call) { lock (_lock) return _calls[(int)call]; }

    /// <summary>Calls of <paramref name="call"/> refused so far.</summary>
    public int Refused(OsCall call) { lock (_lock) return _refused[(int)call]; }

    public nint Map(nuint bytes, bool readWrite, out int errno)
    {
        lock (_lock)
        {
            if (Refusal(OsCall.Map, 0, 0, out errno)) return 0;
            if ((errno = OverLimit(_vmas.Count + 1)) != 0) { _refused[(int)OsCall.Map]++; return 0; }
            nint p = _real.Map(bytes, readWrite, out errno);
            if (p != 0) Insert(new Vma(p, p, p + (nint)bytes, readWrite, null));
            return p;
        }
    }

    public int Protect(nint address, nuint bytes, bool readWrite)
    {
        OsCall call = readWrite ? OsCall.Protect : OsCall.Revoke;
        lock (_lock)
        {
            if (Refusal(call, address, bytes, out int errno)) return errno;
            List<Vma>? after = Changed(address, bytes, v => v with { ReadWrite = readWrite });
            if (after != null && (errno = OverLimit(after.Count)) != 0) { _refused[(int)call]++; return errno; }
            errno = _real.Protect(address, bytes, readWrite);
            if (errno == 0 && after != null) Replace(after);
            return errno;
        }
    }

    public int Advise(nint address, nuint bytes, OsAdvice advice)
    {
        OsCall call = advice switch { OsAdvice.DontNeed => OsCall.DontNeed, OsAdvice.HugePage => OsCall.HugePage, _ => OsCall.NoHugePage };
        lock (_lock)
        {
            if (Refusal(call, address, bytes, out int errno)) return errno;
            List<Vma>? after = advice == OsAdvice.DontNeed ? null : Changed(address, bytes, v => v with { Advice = advice });
            if (after != null && (errno = OverLimit(after.Count)) != 0) { _refused[(int)call]++; return errno; }
            errno = _real.Advise(address, bytes, advice);
            if (errno == 0 && after != null) Replace(after);
            return errno;
        }
    }

    public int Unmap(nint address, nuint bytes)
    {
        lock (_lock)
        {
            _calls[(int)OsCall.Unmap]++;
            int errno = _real.Unmap(address, bytes);
            if (errno == 0) _vmas.RemoveAll(v => v.Start >= address && v.End <= address + (nint)bytes);
            return errno;
        }
    }

    /// <summary>Counts the call and, when a rule refuses it, counts the refusal and gives the rule's errno.</summary>
    private bool Refusal(OsCall call, nint address, nuint bytes, out int errno)
    {
        _calls[(int)call]++;
        errno = 0;
        foreach (Rule r in _rules)
        {
            if (r.Call != call || r.Left == 0) continue;
            if (call != OsCall.Map && (address + (nint)bytes <= r.From || address >= r.To)) continue;
            if (r.Skip > 0) { r.Skip--; continue; }
            r.Left--;
            _refused[(int)call]++;
            errno = r.Errno;
            return true;
        }
        return false;
    }

    /// <summary>ENOMEM when <paramref name="mappings"/> would pass <see cref="MaxMappings"/> (the kernel's answer to
    /// a split past vm.max_map_count), else 0. The caller counts the refusal under its own kind.</summary>
    private int OverLimit(int mappings) => MaxMappings is int max && mappings > max ? OutOfMemory : 0;

    /// <summary>The model's mappings after <paramref name="change"/> applies to [address, address + bytes): the
    /// mappings it covers are split at its ends and changed, then equal neighbours of one region merge. Null when
    /// the range lies in no mapping of this layer (the model does not track it).</summary>
    private List<Vma>? Changed(nint address, nuint bytes, Func<Vma, Vma> change)
    {
        nint end = address + (nint)bytes;
        if (!_vmas.Exists(v => v.Start < end && v.End > address)) return null;
        var result = new List<Vma>(_vmas.Count + 2);
        foreach (Vma v in _vmas)
        {
            if (v.End <= address || v.Start >= end) { Add(result, v); continue; }
            if (v.Start < address) Add(result, v with { End = address });
            Add(result, change(v with { Start = Math.Max(v.Start, address), End = Math.Min(v.End, end) }));
            if (v.End > end) Add(result, v with { Start = end });
        }
        return result;
    }

    /// <summary>Appends <paramref name="v"/>, merging it into the last mapping when they touch, belong to one region
    /// and have the same protection and advice (as the kernel merges neighbouring VMAs).</summary>
    private static void Add(List<Vma> list, Vma v)
    {
        if (list.Count > 0 && list[^1] is var last && last.Region == v.Region && last.End == v.Start
            && last.ReadWrite == v.ReadWrite && last.Advice == v.Advice)
            list[^1] = last with { End = v.End };
        else
            list.Add(v);
    }

    private void Insert(Vma v)
    {
        int i = _vmas.FindIndex(x => x.Start > v.Start);
        _vmas.Insert(i < 0 ? _vmas.Count : i, v);
    }

    private void Replace(List<Vma> after)
    {
        _vmas.Clear();
        _vmas.AddRange(after);
    }
}
