using Compaction.Allocator.Os;

namespace Compaction.Allocator.Engine;

/// <summary>What one background wake cost, in nanoseconds: its wall time on the heap's clock, the background thread's
/// own CPU (-1 without a thread clock), the process's CPU over the wake (-1 without a process clock), what the other
/// threads would have spent in that time at the rate they ran while the thread slept (<see cref="Baseline"/>), and
/// what the wake is charged (<see cref="Charged"/>: see <see cref="CompactionPacer"/>).</summary>
internal readonly record struct WakeCharge(long Wall, long Thread, long Process, long Baseline, long Charged);

/// <summary>
/// How much CPU a background wake costs the process, and how long the thread sleeps after it so that the compactor
/// holds its share (native-layout.md, section 9, "Pacing by the process's CPU"). The compactor's steps make other
/// threads work too: every migration batch's process-wide barrier interrupts each running thread, a mutator waits on a
/// frozen block, a purged page is faulted back in. Its own thread's CPU clock sees none of that, so a wake is charged
/// the larger of its thread's CPU and the process's CPU over the wake less what the other threads spend anyway:
/// <code>
///   rate     = (CPU the other threads used while this one slept) / (wall time it slept)    decayed sums, see below
///   excess   = process CPU over the wake - rate * the wake's wall time
///   charged  = max(thread CPU over the wake, excess)
///   sleep    = charged / share - the wake's wall time, at least 1 ms  (so charged / (wake + sleep) = share)
/// </code>
/// The rate is a ratio of decayed sums over the sleeps (each sleep's weight falls by an eighth at every later one,
/// so the rate follows the mutators' load within a few dozen wakes and one odd sleep moves it little). Before the
/// first sleep is measured the rate is 0: the whole process's CPU over the wake is charged (too much, never too
/// little). Work a step causes after it ends (a page faulted back in during the sleep) falls in the sleep and counts
/// as the other threads' own. Without a process clock the wake is charged its thread's CPU, and without either clock
/// its wall time (what the pacing used before it had clocks).
/// </summary>
/// <remarks>Used by one background thread only (each thread has its own: a thread clock's readings mean nothing on
/// another thread), so it needs no lock. Wall time is read from the heap's <see cref="TimeProvider"/>, CPU time
/// from a <see cref="CpuClock"/>: a test scripts both and counts what the pacer decides.</remarks>
internal sealed class CompactionPacer
{
    /// <summary>The weight a sleep's reading keeps at each later sleep.</summary>
    public const double BaselineDecay = 0.875;

    /// <summary>The shortest sleep after a paced wake.</summary>
    public static readonly TimeSpan MinimumDelay = TimeSpan.FromMilliseconds(1);

    private readonly TimeProvider _clock;
    private readonly CpuClock _cpu;
    private bool _asleep;                               // MarkAsleep ran: the readings below start the current sleep
    private long _sleepWall, _sleepProcess, _sleepThread;   // ... the wall timestamp and the CPU clocks then
    private long _wakeWall, _wakeProcess, _wakeThread;      // the current wake's start
    private double _othersCpu, _sleptWall;              // decayed sums over the sleeps, nanoseconds

    public CompactionPacer(TimeProvider clock, CpuClock cpu)
    {
        _clock = clock;
        _cpu = cpu;
    }

    /// <summary>The other threads' CPU rate while this one slept (cores: 1 is one core busy), or 0 before a sleep
    /// was measured.</summary>
    public double BaselineRate => _sleptWall > 0 ? _othersCpu / _sleptWall : 0;

    /// <summary>The thread goes to sleep (its first sleep; later ones start in <see cref="WakeEnded"/>): takes the
    /// readings the next <see cref="WakeStarting"/> measures the sleep from.</summary>
    public void MarkAsleep()
    {
        _sleepWall = _clock.GetTimestamp();
        _sleepProcess = _cpu.ProcessNanoseconds();
        _sleepThread = _cpu.ThreadNanoseconds();
        _asleep = true;
    }

    /// <summary>A wake starts: folds the sleep that ended into the rate, and takes the wake's starting readings.</summary>
    public void WakeStarting()
    {
        _wakeProcess = _cpu.ProcessNanoseconds();
        _wakeThread = _cpu.ThreadNanoseconds();
        _wakeWall = _clock.GetTimestamp();
        if (!_asleep) return;
        _asleep = false;
        long slept = Nanoseconds(_wakeWall - _sleepWall);
        if (slept <= 0 || _wakeProcess < 0 || _sleepProcess < 0) return;
        // The process's CPU over the sleep, less what this thread used in it (waking up): the other threads'.
        long others = _wakeProcess - _sleepProcess;
        if (_wakeThread >= 0 && _sleepThread >= 0) others -= _wakeThread - _sleepThread;
        _othersCpu = _othersCpu * BaselineDecay + Math.Max(0, others);
        _sleptWall = _sleptWall * BaselineDecay + slept;
    }

    /// <summary>The wake ended: what it cost and what it is charged; the thread's sleep starts here.</summary>
    public WakeCharge WakeEnded()
    {
        long process = _cpu.ProcessNanoseconds(), thread = _cpu.ThreadNanoseconds(), wallEnd = _clock.GetTimestamp();
        long wall = Math.Max(0, Nanoseconds(wallEnd - _wakeWall));
        long threadCpu = thread >= 0 && _wakeThread >= 0 ? Math.Max(0, thread - _wakeThread) : -1;
        long processCpu = process >= 0 && _wakeProcess >= 0 ? Math.Max(0, process - _wakeProcess) : -1;
        long baseline = (long)(BaselineRate * wall);
        long charged = processCpu >= 0 ? Math.Max(threadCpu, processCpu - baseline)
            : threadCpu >= 0 ? threadCpu
            : wall;
        _sleepWall = wallEnd;
        _sleepProcess = process;
        _sleepThread = thread;
        _asleep = true;
        return new WakeCharge(wall, threadCpu, processCpu, baseline, Math.Max(0, charged));
    }

    /// <summary>The sleep after a wake charged <paramref name="charge"/> that keeps the compactor at
    /// <paramref name="share"/> of a core (0 &lt; share &lt;= 1): charged / share less the wake's own wall time, at
    /// least <see cref="MinimumDelay"/>.</summary>
    public static TimeSpan PacedDelay(WakeCharge charge, double share)
    {
        double sleep = charge.Charged / share - charge.Wall;
        return TimeSpan.FromTicks(Math.Max(MinimumDelay.Ticks, (long)(sleep / 100)));
    }

    /// <summary>A difference of the clock's timestamps in nanoseconds.</summary>
    private long Nanoseconds(long timestamps) => (long)(timestamps * (1e9 / _clock.TimestampFrequency));
}
