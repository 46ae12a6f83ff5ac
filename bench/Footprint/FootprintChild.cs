using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Bench.Scenarios;

namespace Compaction.Bench.Footprint;

/// <summary>
/// The hidden <c>footprint-child</c> command: one allocator, one workload, one seed, in a process of its own. It
/// prepares everything it will need (block list, sample array, sampler thread, JIT through a small warm-up run), takes
/// the baseline RSS, runs the workload, then (native-explicit only) <c>Compact()</c> + <c>ReleaseFreeMemory()</c>,
/// then stays idle for the window while the sampler keeps reading RSS, then calls the peer's trim. Every surviving
/// block is verified at the end. Figures and samples go to the file the parent named (<see cref="FootprintFile"/>).
/// Exit code 0, 1 when a block was corrupt or the run threw, 3 when the allocator is not available here.
/// </summary>
internal static class FootprintChild
{
    public const string Command = "footprint-child";

    public static int Run(string[] args)
    {
        string? workloadName = null, allocatorName = null, outPath = null;
        int seed = 1, scale = 1, windowMs = 15_000;
        double limitFactor = 0;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            string v = args[i + 1];
            switch (args[i])
            {
                case "--workload": workloadName = v; break;
                case "--allocator": allocatorName = v; break;
                case "--out": outPath = v; break;
                case "--seed": seed = int.Parse(v, CultureInfo.InvariantCulture); break;
                case "--scale": scale = int.Parse(v, CultureInfo.InvariantCulture); break;
                case "--window-ms": windowMs = int.Parse(v, CultureInfo.InvariantCulture); break;
                case "--limit-factor": limitFactor = double.Parse(v, CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"{Command}: unknown option {args[i]}");
                    return 2;
            }
        }
        if (workloadName == null || allocatorName == null || outPath == null)
        {
            Console.Error.WriteLine($"usage: {Command} --workload W --allocator A --seed S [--scale N] [--window-ms MS] [--limit-factor F] --out FILE");
            return 2;
        }

        var file = new FootprintFile();
        file.Set("workload", workloadName);
        file.Set("allocator", allocatorName);
        file.Set("seed", seed);
        int rc;
        try
        {
            rc = Measure(new FootprintWorkload(workloadName, scale, seed), allocatorName, windowMs, limitFactor, file);
        }
        catch (Exception e)
        {
            file.Set("status", "failed");
            file.Set("error", $"{e.GetType().Name}: {e.Message}".Replace('\n', ' ').Replace('\r', ' '));
            Console.Error.WriteLine($"{Command} {workloadName}/{allocatorName}: {e}");
            rc = 1;
        }
        file.Write(outPath);
        return rc;
    }

    /// <summary>Sets <c>HeapOptions.MemoryLimit</c> (bytes of committed arena memory; 0 = no limit).</summary>
    public static void ApplyMemoryLimit(HeapOptions o, long bytes) => o.MemoryLimit = bytes;

    private static int Measure(FootprintWorkload w, string allocatorName, int windowMs, double limitFactor, FootprintFile file)
    {
        long limit = allocatorName == FootprintAllocator.NativeLimit && limitFactor > 0 ? (long)(limitFactor * w.PeakLiveBytes) : 0;
        if (allocatorName == FootprintAllocator.NativeLimit)
        {
            file.Set("limitFactor", limitFactor);
            file.Set("memoryLimit", limit);
        }
        using FootprintAllocator? a = FootprintAllocator.Create(allocatorName, w.ArenaBytes, w.Capacity, limit, out string? why);
        if (a == null)
        {
            file.Set("status", "skipped");
            file.Set("error", why ?? "not available");
            return 3;
        }
        if (a is NativeAllocator native) file.Set("arenaBytes", native.ArenaBytes);
        file.Set("trimName", a.TrimName ?? "-");
        file.Set("mayFail", a.MayFail ? 1 : 0);
        file.Set("gc", System.Runtime.GCSettings.IsServerGC ? "server" : "workstation");
        file.Set("peakLiveNominal", w.PeakLiveBytes);

        // Everything the measured run needs exists (and is written) before the baseline: the block list, the sample
        // array, the sampler thread, and the JIT's code for every step (a run of the same workload 1/256 the size).
        List<Item> items = HeapWorkload.PrefaultedList<Item>(w.Capacity);
        using var rec = new RssRecorder(maxSeconds: 900);
        WarmUp(w, a);

        long baseline = ProcessMemory.SettledResidentBytes() ?? 0;
        rec.Begin(baseline);
        // The kernel's peak counter: reset it and check that the reset took (VmHWM falls to the RSS of now).
        long hwmBefore = PeakRss.Read();
        bool hwm = PeakRss.Reset();
        long hwmAfter = PeakRss.Read(), rssAtReset = rec.RssNow() + baseline;
        file.Set("hwmBeforeReset", hwmBefore);
        file.Set("hwmAfterReset", hwmAfter);
        file.Set("rssAtReset", rssAtReset);
        rec.KernelPeak = hwm;
        file.Set("peakCounter", hwm ? "VmHWM" : "samples");
        a.Start();
        WorkloadResult result = w.Run(a, rec, items);
        rec.ClosePhase();
        long live = result.Live;
        double endMs = rec.NowMs;
        long peakWorkload = rec.PeakSince(0);
        long noCall = rec.RssNow();
        file.Set("baselineBytes", baseline);
        file.Set("liveBytes", live);
        file.Set("peakLiveBytes", result.PeakLive);
        file.Set("failedAllocations", result.Failed);
        file.Set("workloadEndMs", endMs);
        file.Set("rssNoCall", noCall);
        file.Set("rssPeakWorkload", peakWorkload);
        foreach (PhaseOps o in result.Ops) file.Ops.Add(o);

        if (a is NativeAllocator atEnd) file.Set("heapCommittedNoCall", atEnd.Heap.GetStatistics().CommittedBytes);
        int afterPhase = rec.PhaseCount;
        if (a is NativeAllocator { Background: false } explicitHeap)
        {
            rec.Phase("Compact + ReleaseFreeMemory");
            long start = rec.RssNow();
            double callStartMs = rec.NowMs;
            long t0 = Stopwatch.GetTimestamp();
            explicitHeap.Heap.Compact();
            explicitHeap.Heap.ReleaseFreeMemory();
            double callMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            rec.ClosePhase();
            long callPeak = rec.PeakSince(rec.PhaseCount - 1);
            long after = rec.RssNow();
            file.Set("rssCallStart", start);
            file.Set("rssAfterCall", after);
            file.Set("callMs", callMs);
            file.Set("callStartMs", callStartMs);
            file.Set("rssCallPeak", Math.Max(Math.Max(callPeak, start), after));
        }

        rec.Phase("idle");
        double idleStart = rec.NowMs;
        file.Set("idleStartMs", idleStart);
        file.Set("windowMs", windowMs);
        while (rec.NowMs < idleStart + windowMs) Thread.Sleep(10);
        long settled = rec.RssNow();
        rec.ClosePhase();
        long peakAfter = rec.PeakSince(afterPhase);
        file.Set("rssSettled", settled);
        file.Set("windowEndMs", rec.NowMs);
        file.Set("rssPeakAfterWorkload", peakAfter);

        if (a.TrimName != null)
        {
            rec.Phase("trim");
            bool ok = a.Trim();
            Thread.Sleep(3 * RssRecorder.IntervalMs);   // so that the plot shows a sample after the call
            file.Set("rssAfterTrim", ok ? rec.RssNow() : -1);
            rec.ClosePhase();
        }
        rec.Stop();
        file.Set("samplesTruncated", rec.Truncated ? 1 : 0);

        int corrupt = 0;
        foreach (Item it in items)
            if (!a.Verify(it.Id, it.Size, it.Pattern)) corrupt++;
        file.Set("blocks", items.Count);
        file.Set("corrupt", corrupt);

        if (a is NativeAllocator n)
        {
            HeapStatistics s = n.Heap.GetStatistics();
            file.Set("heapCommitted", s.CommittedBytes);
            file.Set("heapLive", s.LiveBytes);
            file.Set("heapMetadata", s.MetadataBytes);
            file.Set("heapPurged", s.PurgedBytes);
            file.Set("heapDecommitted", s.DecommittedBytes);
            file.Set("heapBlocksMigrated", s.BlocksMigrated);
            file.Set("heapBytesMigrated", s.BytesMigrated);
            file.Set("wasteWakes", s.Compaction.WasteWakes);
            file.Set("wasteBytesMoved", s.Compaction.WasteBytesMoved);
            file.Set("daemonWakes", s.Compaction.CompactDaemonWake);
            file.Set("pgmigrateSuccess", s.Compaction.PgmigrateSuccess);
        }

        foreach ((string name, double ms, long peak) in rec.Phases()) file.Phases.Add((name, ms, peak));
        foreach (RssSample s in rec.Samples) file.Samples.Add(s);
        foreach (Item it in items) a.Free(it.Id);
        file.Set("status", corrupt == 0 ? "ok" : "corrupt");
        return corrupt == 0 ? 0 : 1;
    }

    /// <summary>The workload at 1/256 of its size, verified and freed, so that the measured run pays no JIT: through
    /// the same allocator for the peers (what it keeps cached is a few MiB at most), through a heap of its own
    /// (disposed before the baseline) for NativeHeap.</summary>
    private static void WarmUp(FootprintWorkload w, FootprintAllocator a)
    {
        var small = new FootprintWorkload(w.Name, 256, 7);
        // NativeHeap's warm-up heap has no limit: a 1/256 workload sits far below one pageblock per size class.
        FootprintAllocator target = a is NativeAllocator n ? new NativeAllocator(n.Name, Math.Max(small.ArenaBytes, 64L << 20), n.Background) : a;
        try
        {
            var items = new List<Item>(small.Capacity);
            using var rec = new RssRecorder(maxSeconds: 1);
            target.Start();
            small.Run(target, rec, items);
            foreach (Item it in items)
                if (!target.Verify(it.Id, it.Size, it.Pattern)) throw new InvalidOperationException($"{a.Name}: warm-up block corrupt");
            foreach (Item it in items) target.Free(it.Id);
            if (target is NativeAllocator nt) { nt.Heap.Compact(); nt.Heap.ReleaseFreeMemory(); nt.Heap.GetStatistics(); }
            else target.Trim();
        }
        finally
        {
            if (target != a) target.Dispose();
        }
    }
}

/// <summary>
/// What a child hands its parent, as CSV lines: <c>S,key,value</c> (figures; bytes above the baseline unless the key
/// says otherwise), <c>P,phase,startMs,peakBytes</c> (phases in order, with the kernel's peak RSS during each above the
/// baseline, -1 when not taken), <c>O,phase,allocs,frees,failed,ms,peakLiveSoFar</c> (the workload's operations per phase) and
/// <c>R,ms,phase,rssBytes,liveBytes</c> (samples).
/// </summary>
internal sealed class FootprintFile
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public Dictionary<string, string> Values { get; } = [];
    public List<(string Name, double StartMs, long PeakBytes)> Phases { get; } = [];
    public List<PhaseOps> Ops { get; } = [];
    public List<RssSample> Samples { get; } = [];

    public void Set(string key, string value) => Values[key] = value.Replace(',', ';');
    public void Set(string key, long value) => Values[key] = value.ToString(Inv);
    public void Set(string key, double value) => Values[key] = value.ToString("R", Inv);

    public string? Get(string key) => Values.GetValueOrDefault(key);

    /// <summary>The figure as a number, NaN when absent (or negative: a figure that could not be taken).</summary>
    public double Number(string key) =>
        Values.TryGetValue(key, out string? v) && double.TryParse(v, NumberStyles.Float, Inv, out double d) && d >= 0 ? d : double.NaN;

    public void Write(string path)
    {
        using var w = new StreamWriter(path);
        foreach ((string k, string v) in Values) w.WriteLine($"S,{k},{v}");
        foreach ((string name, double ms, long peak) in Phases) w.WriteLine(string.Create(Inv, $"P,{name},{ms:F1},{peak}"));
        foreach (PhaseOps o in Ops) w.WriteLine(string.Create(Inv, $"O,{o.Phase},{o.Allocs},{o.Frees},{o.Failed},{o.Ms:R},{o.PeakLiveSoFar}"));
        foreach (RssSample s in Samples) w.WriteLine(string.Create(Inv, $"R,{s.Ms:F1},{s.Phase},{s.Rss},{s.Live}"));
    }

    public static FootprintFile Read(string path)
    {
        var f = new FootprintFile();
        foreach (string line in File.ReadLines(path))
        {
            string[] p = line.Split(',');
            switch (p[0])
            {
                case "S" when p.Length >= 3:
                    f.Values[p[1]] = p[2];
                    break;
                case "P" when p.Length >= 3:
                    f.Phases.Add((p[1], double.Parse(p[2], Inv), p.Length >= 4 ? long.Parse(p[3], Inv) : -1));
                    break;
                case "O" when p.Length >= 7:
                    f.Ops.Add(new PhaseOps(p[1], long.Parse(p[2], Inv), long.Parse(p[3], Inv), long.Parse(p[4], Inv), double.Parse(p[5], Inv), long.Parse(p[6], Inv)));
                    break;
                case "R" when p.Length >= 5:
                    f.Samples.Add(new RssSample
                    {
                        Ms = double.Parse(p[1], Inv), Phase = int.Parse(p[2], Inv), Rss = long.Parse(p[3], Inv), Live = long.Parse(p[4], Inv),
                    });
                    break;
            }
        }
        return f;
    }
}
