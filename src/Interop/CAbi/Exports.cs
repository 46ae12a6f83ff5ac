using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Compaction.Allocator;

namespace Compaction.Interop.CAbi;

/// <summary>The structs of compaction_heap.h, field for field (tests/CAbiTests.cs checks every offset and size
/// against the C compiler's).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CnaHeapOptions
{
    public int Size;
    public int MovableZonePercent;
    public long ArenaBytes;
    public int UseHugePages;
    public int Background;
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
/// The exports of libcompaction_heap.so (compaction_heap.h). Heaps live in a table keyed by 64-bit ids that are
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
            var o = new HeapOptions();
            bool background = false;
            if (options != null)
            {
                if (options->Size < sizeof(CnaHeapOptions)) return BadArgument;
                if (options->ArenaBytes != 0) o.ArenaBytes = options->ArenaBytes;
                if (options->MovableZonePercent != 0) o.MovableZonePercent = options->MovableZonePercent;
                if (options->UseHugePages is < 0 or > 2) return BadArgument;
                if (options->UseHugePages == 2) o.UseHugePages = false;
                background = options->Background != 0;
            }
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
            if (pinOut == null || pinOut->Size < sizeof(CnaPinInfo)) return BadArgument;
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
            if (statsOut != null && statsOut->Size < sizeof(CnaStats)) return BadArgument;
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
            if (statsOut == null || statsOut->Size < sizeof(CnaStats)) return BadArgument;
            if (!TryGet(heap, out HeapBox box)) return BadHeap;
            Fill(box.Heap, statsOut);
            return Ok;
        }
        catch (Exception e)
        {
            return StatusOf(e);
        }
    }

    private static void Fill(NativeHeap heap, CnaStats* o)
    {
        HeapStatistics s = heap.GetStatistics();
        CompactionStatistics c = s.Compaction;
        *o = new CnaStats
        {
            Size = sizeof(CnaStats),
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
    }
}
