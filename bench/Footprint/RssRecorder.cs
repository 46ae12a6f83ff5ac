using System.Diagnostics;
using System.Globalization;
using Microsoft.Win32.SafeHandles;

namespace Compaction.Bench.Footprint;

/// <summary>
/// Reads this process's resident bytes from /proc/self/statm (second field, in pages) through one open handle and a
/// fixed buffer: no managed allocation per reading, so the sampler itself does not move RSS. One reader per thread.
/// </summary>
internal sealed class StatmReader : IDisposable
{
    private readonly SafeFileHandle? _handle;
    private readonly byte[] _buffer = new byte[256];

    public StatmReader()
    {
        try
        {
            _handle = File.OpenHandle("/proc/self/statm");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _handle = null;
        }
    }

    /// <summary>Resident bytes now (0 where /proc is missing).</summary>
    public long Read()
    {
        if (_handle == null) return 0;
        int n = RandomAccess.Read(_handle, _buffer, 0);
        int i = 0;
        while (i < n && _buffer[i] != ' ') i++;   // skip "size"
        i++;
        long pages = 0;
        for (; i < n && _buffer[i] >= '0' && _buffer[i] <= '9'; i++) pages = pages * 10 + (_buffer[i] - '0');
        return pages * Environment.SystemPageSize;
    }

    public void Dispose() => _handle?.Dispose();
}

/// <summary>
/// The kernel's peak-RSS counter (VmHWM in /proc/self/status), reset by writing 5 to /proc/self/clear_refs: it sees a
/// spike however short, where the 5 ms sampler could miss one. Absolute bytes (the runtime included).
/// </summary>
internal static class PeakRss
{
    /// <summary>Sets the peak to the current RSS; false when the kernel refuses (then <see cref="Read"/> is the
    /// lifetime peak and the callers fall back to the samples).</summary>
    public static bool Reset()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>VmHWM in bytes, or -1.</summary>
    public static long Read()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (!line.StartsWith("VmHWM:", StringComparison.Ordinal)) continue;
                string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        catch (IOException)
        {
        }
        return -1;
    }
}

/// <summary>One reading of the sampler: when (ms since the baseline), in which phase, resident bytes above the baseline,
/// and the bytes the workload had live (requested).</summary>
internal struct RssSample
{
    public double Ms;
    public int Phase;
    public long Rss;
    public long Live;
}

/// <summary>
/// A dedicated thread that reads RSS every 5 ms into a preallocated, prefaulted array, from <see cref="Begin"/> until
/// <see cref="Stop"/>, tagging each sample with the current phase and the workload's live bytes. The thread and the
/// array exist before the baseline is taken, so neither shows up in the figures. With <see cref="KernelPeak"/> set, the
/// end of every phase (the next <see cref="Phase"/> or <see cref="ClosePhase"/>) also reads the kernel's VmHWM and
/// resets it, so each phase has its own peak, however short the spike.
/// </summary>
internal sealed class RssRecorder : IDisposable
{
    public const int IntervalMs = 5;
    private const int MaxPhases = 32;

    private readonly RssSample[] _samples;
    private int _count;
    private readonly string[] _phaseNames = new string[MaxPhases];
    private readonly double[] _phaseStarts = new double[MaxPhases];
    private readonly long[] _phasePeaks = new long[MaxPhases];
    private int _phaseCount;
    private int _phase = -1;
    private long _live;
    private long _baseline;
    private long _t0;
    private volatile bool _stop;
    private readonly ManualResetEventSlim _go = new();
    private readonly Thread _thread;
    private readonly StatmReader _reader = new();
    private readonly StatmReader _mainReader = new();

    /// <param name="maxSeconds">How long it may record; later samples are dropped (and <see cref="Truncated"/> says so).</param>
    public RssRecorder(int maxSeconds)
    {
        _samples = new RssSample[maxSeconds * 1000 / IntervalMs + 16];
        Array.Fill(_samples, new RssSample { Ms = 1 });   // write every page of the array now
        _thread = new Thread(Loop) { IsBackground = true, Name = "footprint RSS sampler" };
        _thread.Start();
        _reader.Read();
        _mainReader.Read();
    }

    /// <summary>Resident bytes at the baseline (absolute).</summary>
    public long Baseline => _baseline;

    /// <summary>True when the run outlasted the array.</summary>
    public bool Truncated { get; private set; }

    /// <summary>The workload's live bytes, read by the sampler.</summary>
    public long Live
    {
        get => Volatile.Read(ref _live);
        set => Volatile.Write(ref _live, value);
    }

    /// <summary>Milliseconds since the baseline.</summary>
    public double NowMs => Stopwatch.GetElapsedTime(_t0).TotalMilliseconds;

    /// <summary>Resident bytes above the baseline now, read on the calling thread.</summary>
    public long RssNow() => _mainReader.Read() - _baseline;

    /// <summary>Takes the baseline (absolute RSS now) and starts sampling.</summary>
    public void Begin(long baselineAbsolute)
    {
        _baseline = baselineAbsolute;
        _t0 = Stopwatch.GetTimestamp();
        _go.Set();
    }

    /// <summary>True when the kernel's VmHWM can be reset here (<see cref="PeakRss.Reset"/> worked): then every phase
    /// gets the kernel's peak.</summary>
    public bool KernelPeak { get; set; }

    /// <summary>Ends the current phase: reads VmHWM as its peak and resets it (once; nothing without
    /// <see cref="KernelPeak"/>). What happens between this and the next <see cref="Phase"/> counts into the next one.</summary>
    public void ClosePhase()
    {
        int i = _phaseCount - 1;
        if (!KernelPeak || i < 0 || _phasePeaks[i] >= 0) return;
        _phasePeaks[i] = PeakRss.Read();
        PeakRss.Reset();
    }

    /// <summary>Starts a phase (closing the one before): later samples carry its index; its start time is kept for the
    /// report's plot.</summary>
    public void Phase(string name)
    {
        if (_phaseCount == MaxPhases) return;
        ClosePhase();
        _phaseNames[_phaseCount] = name;
        _phaseStarts[_phaseCount] = NowMs;
        _phasePeaks[_phaseCount] = -1;
        Volatile.Write(ref _phase, _phaseCount);
        _phaseCount++;
    }

    public void Stop()
    {
        _stop = true;
        _go.Set();
        _thread.Join();
    }

    private void Loop()
    {
        _go.Wait();
        long next = Stopwatch.GetTimestamp();
        long step = Stopwatch.Frequency * IntervalMs / 1000;
        while (!_stop)
        {
            int i = _count;
            if (i < _samples.Length)
            {
                _samples[i] = new RssSample { Ms = NowMs, Phase = Volatile.Read(ref _phase), Rss = _reader.Read() - _baseline, Live = Live };
                _count = i + 1;
            }
            else
            {
                Truncated = true;
            }
            next += step;
            long wait = next - Stopwatch.GetTimestamp();
            if (wait > 0) Thread.Sleep(TimeSpan.FromTicks(wait * TimeSpan.TicksPerSecond / Stopwatch.Frequency));
            else next = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>The samples taken (valid after <see cref="Stop"/>).</summary>
    public ReadOnlySpan<RssSample> Samples => _samples.AsSpan(0, _count);

    /// <summary>Phase names, start times (ms since the baseline) and kernel peaks (VmHWM during the phase, bytes above
    /// the baseline; -1 when not taken), in order.</summary>
    public IEnumerable<(string Name, double StartMs, long PeakBytes)> Phases()
    {
        for (int i = 0; i < _phaseCount; i++) yield return (_phaseNames[i], _phaseStarts[i], _phasePeaks[i] < 0 ? -1 : _phasePeaks[i] - _baseline);
    }

    /// <summary>The kernel peak (bytes above the baseline) of the phases from <paramref name="first"/> (index) on, -1
    /// when none was taken.</summary>
    public long PeakSince(int first)
    {
        long peak = -1;
        for (int i = Math.Max(0, first); i < _phaseCount; i++)
            if (_phasePeaks[i] >= 0) peak = Math.Max(peak, _phasePeaks[i] - _baseline);
        return peak;
    }

    /// <summary>The number of phases started so far.</summary>
    public int PhaseCount => _phaseCount;

    public void Dispose()
    {
        if (!_stop) Stop();
        _reader.Dispose();
        _mainReader.Dispose();
        _go.Dispose();
    }
}
