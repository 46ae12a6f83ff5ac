using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Interop.CAbi;

/// <summary>The structs of compaction_heap.h, field for field (tests/Interop/CAbiTests.cs checks every offset and size
/// against the C compiler's).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CnaHeapOptions
{
    public int Size;
    public int MovableZonePercent;
    public long ArenaBytes;
    public int UseHugePages;
    public int Background;
    public long MemoryLimit;
}

/// <inheritdoc cref="CnaHeapOptions"/>
[StructLayout(LayoutKind.Sequential)]
public struct CnaPinInfo
{
    public int Size;
    public int Reserved;
    public nint Address;
    public long Length;
    public ulong Token;
}

/// <inheritdoc cref="CnaHeapOptions"/>
[StructLayout(LayoutKind.Sequential)]
public struct CnaStats
{
    public int Size;
    public int FragmentationScore;
    public long LiveBytes;
    public long LiveBlocks;
    public long CommittedBytes;
    public long ReservedBytes;
    public long DecommittedBytes;
    public long PurgedBytes;
    public long MetadataBytes;
    public long LongTermPins;
    public long LongTermPinMigrations;
    public long CompactStall;
    public long CompactSuccess;
    public long PgmigrateSuccess;
    public long PgmigrateFail;
    public long BytesMoved;
}

/// <summary>
/// The exports of libcompaction_heap.so (compaction_heap.h). The struct-size contract (header, "Structs carry their
/// own size"): a struct shorter than today's, from a caller built against an older header, is read, or written, only
/// as far as its size goes (fields beyond it take their defaults, or are not written); a struct longer than today's
/// is refused with CNA_E_BAD_ARGUMENT (this library would not know its tail); a size below the fields a call cannot
/// do without (the size itself; a pin's token) is refused too. Heaps live in a table keyed by 64-bit ids that are
/// never reused, so a destroyed or forged id is looked up, not dereferenced; pins live in a per-heap table keyed by
/// never-reused tokens. Every export catches every exception and turns it into a status code: nothing crosses the
/// boundary.
/// </summary>
public static unsafe class Exports
{
    private const int Ok = 0, BadHandle = -1, BadArgument = -2, NoMemory = -3, BadHeap = -4, Pinned = -5, Busy = -6, BadPin = -7, Internal = -99;

    private sealed class HeapBox(NativeHeap heap)
    {
        public readonly NativeHeap Heap = heap;
        public readonly ConcurrentDictionary<ulong, BlockPin> Pins = new();
    }

    private static readonly ConcurrentDictionary<ulong, HeapBox> s_heaps = new();
    private static long s_nextHeap;
    private static long s_nextPin;

    /// <summary>The status of an exception thrown by the heap; <paramref name="destroying"/> maps a refused Dispose.</summary>
    private static int StatusOf(Exception e, bool destroying = false) => e switch
    {
        InvalidBlockHandleException => BadHandle,
        ObjectDisposedException => BadHeap,
        OutOfMemoryException => NoMemory,
        ArgumentException => BadArgument,
        InvalidOperationException => destroying ? Busy : Pinned,
        _ => Internal,
    };

    private static bool TryGet(ulong heap, out HeapBox box) => s_heaps.TryGetValue(heap, out box!);

    [UnmanagedCallersOnly(EntryPoint = "cna_heap_create")]
    public static int HeapCreate(CnaHeapOptions* options, ulong* heapOut)
    {
        try
        {
            if (heapOut == null) return BadArgument;
            *heapOut = 0;
            if (options == null) return BadArgument;   // the header lists a null pointer as CNA_E_BAD_ARGUMENT
            if (!TryReadOptions(options, out CnaHeapOptions given)) return BadArgument;
            var o = new HeapOptions();
            if (given.ArenaBytes != 0) o.ArenaBytes = given.ArenaBytes;
            if (given.MovableZonePercent != 0) o.MovableZonePercent = given.MovableZonePercent;
            if (given.UseHugePages is < 0 or > 2) return BadArgument;
            if (given.UseHugePages == 2) o.UseHugePages = false;
            bool background = given.Background != 0;
            o.MemoryLimit = given.MemoryLimit;   // 0: none; negative or below two pageblocks: ArgumentException -> BadArgument
            var heap = new NativeHeap(o);   // bad options: ArgumentException -> BadArgument
            if (background) heap.StartBackgroundCompaction();
            ulong id = (ulong)Interlocked.Increment(ref s_nextHeap);
            s_heaps[id] = new HeapBox(heap);
            *heapOut = id;
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    /// <summary>Copies the caller's options as far as their size goes into a zeroed struct (zero: the default); false
    /// for a size below the size field itself or above today's struct.</summary>
    private static bool TryReadOptions(CnaHeapOptions* options, out CnaHeapOptions given)
    {
        given = default;
        int size = options->Size;
        if (size < sizeof(int) || size > sizeof(CnaHeapOptions)) return false;
        fixed (CnaHeapOptions* to = &given) Buffer.MemoryCopy(options, to, sizeof(CnaHeapOptions), size);
        return true;
    }

    /// <summary>Whether an output struct whose first field says <paramref name="size"/> can be written: at least
    /// <paramref name="minimum"/> bytes, at most today's <paramref name="current"/>.</summary>
    private static bool FitsOutput(int size, int minimum, int current) => size >= minimum && size <= current;

    [UnmanagedCallersOnly(EntryPoint = "cna_heap_destroy")]
    public static int HeapDestroy(ulong heap)
    {
        try
        {
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            lock (box)
            {
                if (!s_heaps.ContainsKey(heap)) return BadHeap;   // another thread destroyed it meanwhile
                box.Heap.Dispose();                              // refused (InvalidOperationException) while pins are held
                s_heaps.TryRemove(heap, out _);
            }
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e, destroying: true);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_alloc")]
    public static int Alloc(ulong heap, long size, int kind, ulong* handleOut)
    {
        try
        {
            if (handleOut == null || kind is not (0 or 1)) return BadArgument;
            *handleOut = 0;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            if (!box.Heap.TryAllocate(size, kind == 0 ? BlockKind.Movable : BlockKind.Unmovable, out BlockHandle h)) return NoMemory;
            *handleOut = h.Value;
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_free")]
    public static int Free(ulong heap, ulong handle)
    {
        try
        {
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            box.Heap.Free(new BlockHandle(handle));
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_pin")]
    public static int Pin(ulong heap, ulong handle, CnaPinInfo* pinOut) => PinCore(heap, handle, pinOut, longTerm: false);

    [UnmanagedCallersOnly(EntryPoint = "cna_pin_long_term")]
    public static int PinLongTerm(ulong heap, ulong handle, CnaPinInfo* pinOut) => PinCore(heap, handle, pinOut, longTerm: true);

    private static int PinCore(ulong heap, ulong handle, CnaPinInfo* pinOut, bool longTerm)
    {
        try
        {
            // A pin is of no use without its token, the struct's last field: the whole struct is required.
            if (pinOut == null || !FitsOutput(pinOut->Size, sizeof(CnaPinInfo), sizeof(CnaPinInfo))) return BadArgument;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            var h = new BlockHandle(handle);
            BlockPin pin = longTerm ? box.Heap.PinLongTerm(h) : box.Heap.AcquirePin(h);
            ulong token = (ulong)Interlocked.Increment(ref s_nextPin);
            box.Pins[token] = pin;
            pinOut->Reserved = 0;
            pinOut->Address = pin.Address;
            pinOut->Length = pin.Length;
            pinOut->Token = token;
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_unpin")]
    public static int Unpin(ulong heap, ulong token)
    {
        try
        {
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            if (!box.Pins.TryRemove(token, out BlockPin pin)) return BadPin;
            pin.Dispose();
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_compact")]
    public static int Compact(ulong heap, CnaStats* statsOut)
    {
        try
        {
            if (statsOut != null && !FitsOutput(statsOut->Size, sizeof(int), sizeof(CnaStats))) return BadArgument;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            box.Heap.Compact();
            if (statsOut != null) Fill(box.Heap, statsOut);
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_background_start")]
    public static int BackgroundStart(ulong heap)
    {
        try
        {
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            box.Heap.StartBackgroundCompaction();
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_background_stop")]
    public static int BackgroundStop(ulong heap)
    {
        try
        {
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            box.Heap.StopBackgroundCompaction();
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_get_stats")]
    public static int GetStats(ulong heap, CnaStats* statsOut)
    {
        try
        {
            if (statsOut == null || !FitsOutput(statsOut->Size, sizeof(int), sizeof(CnaStats))) return BadArgument;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            Fill(box.Heap, statsOut);
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = "cna_release_free_memory")]
    public static int ReleaseFreeMemory(ulong heap, long* releasedOut)
    {
        try
        {
            if (releasedOut != null) *releasedOut = 0;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            long released = box.Heap.ReleaseFreeMemory();
            if (releasedOut != null) *releasedOut = released;
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    /// <summary>The text of every status, NUL-terminated UTF-8 literals in the library's image (never freed, never moved).</summary>
    [UnmanagedCallersOnly(EntryPoint = "cna_status_string")]
    public static byte* StatusString(int status) => status switch
    {
        Ok => Text("CNA_OK: success\0"u8),
        BadHandle => Text("CNA_E_BAD_HANDLE: a null, stale (freed), forged or another heap's block handle\0"u8),
        BadArgument => Text("CNA_E_BAD_ARGUMENT: a null pointer, a bad size or kind, bad options or a struct size this library does not accept\0"u8),
        NoMemory => Text("CNA_E_NO_MEMORY: the arena (or, for a long-term pin, its unmovable memory) is full\0"u8),
        BadHeap => Text("CNA_E_BAD_HEAP: not a live heap id (never created, or destroyed)\0"u8),
        Pinned => Text("CNA_E_PINNED: the block is pinned\0"u8),
        Busy => Text("CNA_E_BUSY: the heap still has pinned blocks\0"u8),
        BadPin => Text("CNA_E_BAD_PIN: not a live pin token of this heap\0"u8),
        Internal => Text("CNA_E_INTERNAL: an unexpected failure inside the library; the heap stays consistent\0"u8),
        _ => Text("unknown cna_status\0"u8),
    };

    // A u8 literal's bytes are RVA data of the image: a stable address for the life of the process.
    private static byte* Text(ReadOnlySpan<byte> literal) => (byte*)Unsafe.AsPointer(ref Unsafe.AsRef(in literal[0]));

    private static nint s_version;

    /// <summary>The library's version, "MAJOR.MINOR.PATCH" (the packages' version, Directory.Build.props), then
    /// "+COMMIT" when it was built from a git checkout: made once, kept for the life of the process.</summary>
    [UnmanagedCallersOnly(EntryPoint = "cna_version")]
    public static byte* Version()
    {
        nint v = Volatile.Read(ref s_version);
        if (v != 0) return (byte*)v;
        try
        {
            string text = typeof(Exports).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
                              .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion
                          ?? typeof(Exports).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";
            byte[] utf8 = System.Text.Encoding.UTF8.GetBytes(text);
            byte* made = (byte*)NativeMemory.AllocZeroed((nuint)utf8.Length + 1);
            utf8.CopyTo(new Span<byte>(made, utf8.Length));
            nint won = Interlocked.CompareExchange(ref s_version, (nint)made, 0);
            if (won == 0) return made;
            NativeMemory.Free(made);   // another thread made it first
            return (byte*)won;
        }
        catch
        {
            return Text("0.0.0\0"u8);
        }
    }

    /// <summary>Writes the heap's figures into <paramref name="o"/> as far as its size goes (today's struct or an
    /// older, shorter one).</summary>
    private static void Fill(NativeHeap heap, CnaStats* o)
    {
        HeapStatistics s = heap.GetStatistics();
        CompactionStatistics c = s.Compaction;
        int size = o->Size;
        var all = new CnaStats
        {
            Size = size,
            FragmentationScore = s.FragmentationScore,
            LiveBytes = s.LiveBytes,
            LiveBlocks = s.LiveBlocks,
            CommittedBytes = s.CommittedBytes,
            ReservedBytes = s.ReservedBytes,
            DecommittedBytes = s.DecommittedBytes,
            PurgedBytes = s.PurgedBytes,
            MetadataBytes = s.MetadataBytes,
            LongTermPins = s.LongTermPins,
            LongTermPinMigrations = s.LongTermPinMigrations,
            CompactStall = c.CompactStall,
            CompactSuccess = c.CompactSuccess,
            PgmigrateSuccess = c.PgmigrateSuccess,
            PgmigrateFail = c.PgmigrateFail,
            BytesMoved = c.BytesMoved,
        };
        Buffer.MemoryCopy(&all, o, size, size);
    }
}
