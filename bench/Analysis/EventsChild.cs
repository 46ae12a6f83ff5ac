using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;

namespace Compaction.Bench.Analysis;

/// <summary>
/// The <c>events-child</c> command, a workload for the analyzer's end-to-end test: waits for a line on stdin (the
/// session is attached), then fragments a heap, compacts it explicitly three times, runs background steps, releases
/// and fails one allocation; prints its own counters as <c>name=value</c> lines and waits for a last line on stdin.
/// </summary>
public static class EventsChild
{
    public const string Command = "events-child";

    public static int Run()
    {
        Console.WriteLine("ready");
        Console.In.ReadLine();
        using var heap = new NativeHeap(new HeapOptions { ArenaBytes = 1L << 30, WasteHighRatio = 0, Proactiveness = 0 });
        long passes = 0, migrated = 0, moved = 0;
        var rng = new Random(3);
        var blocks = new List<BlockHandle>();
        for (int round = 0; round < 3; round++)
        {
            for (int i = 0; i < 8_000; i++) blocks.Add(heap.Allocate(rng.Next(4) == 0 ? rng.Next(17_000, 60_000) : rng.Next(16, 2000)));
            for (int i = blocks.Count - 1; i >= 0; i -= 2) { heap.Free(blocks[i]); blocks.RemoveAt(i); }
            CompactionStatistics c = heap.Compact();
            passes++;
            migrated += c.PgmigrateSuccess;
            moved += c.BytesMoved;
        }
        for (int s = 0; s < 5; s++) heap.RunCompactionStep(TimeSpan.FromSeconds(s));
        heap.ReleaseFreeMemory();
        _ = heap.TryAllocate(heap.MaxBlockSize, BlockKind.Unmovable, out _);
        HeapStatistics st = heap.GetStatistics();
        Console.WriteLine($"heapId={heap.Id}");
        Console.WriteLine($"explicitPasses={passes}");
        Console.WriteLine($"pagesMigrated={migrated}");
        Console.WriteLine($"bytesMoved={moved}");
        Console.WriteLine($"wakes={st.Compaction.CompactDaemonWake}");
        Console.WriteLine($"decommitted={st.DecommittedBytes}");
        Console.WriteLine($"purged={st.PurgedBytes}");
        Console.WriteLine("done");
        Console.In.ReadLine();
        foreach (BlockHandle b in blocks) heap.Free(b);
        return 0;
    }
}
