using System.Diagnostics;
using System.Diagnostics.Tracing;
using Compaction.Allocator.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pages;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator.Engine;

/// <summary>
/// Long-term pins (the kernel's FOLL_LONGTERM; native-layout.md, "Long-term pins"): pins for memory handed to the OS
/// or to native code for an unbounded time, which first move the block out of movable memory. This is the pin loop:
/// check each block, pin the unmovable ones at once, move the movable ones into unmovable memory in one migration
/// batch, pin each as its move ends, and try again while something short holds a block. It takes the atomic pins
/// (<see cref="AtomicPins"/>); the API wraps each in the <c>BlockPin</c> it returns. Beside the other pin code in
/// spirit; a layer above Pins because it drives the migrator, gives back parked storage and raises events.
/// </summary>
/// <remarks>Takes no lock of its own (the migrator and the reclaimer take theirs). Caller is in a call section, so no
/// Dispose completes meanwhile (it waits for the section): the pin loop needs no disposed check.</remarks>
internal sealed unsafe class LongTermPinner(
    long heapId, PageMap map, Migrator migrator, AllocationPaths paths, LongTermPinCounts counts, TimeSpan patience)
{
    private readonly long _id = heapId;
    private readonly PageMap _map = map;
    private readonly Migrator _migrator = migrator;
    private readonly AllocationPaths _paths = paths;
    private readonly LongTermPinCounts _counts = counts;
    private readonly TimeSpan _patience = patience;

    private static NativeHeapEventSource Events => NativeHeapEventSource.Log;

    /// <summary>
    /// Takes one long-term atomic pin on every block of <paramref name="handles"/>, each unmovable by then; on return
    /// <paramref name="states"/>[k] is the state word block k was pinned on (nonzero), and each pin is counted in
    /// <see cref="LongTermPinCounts.Held"/>. All or nothing: when one block cannot be pinned, the pins this call took
    /// are dropped, the failure is counted and the exception thrown (blocks already moved stay unmovable). The handles
    /// were checked by the caller; a block freed meanwhile is reported as a bad handle. Caller is in a call section.
    /// The patience is measured on the process's monotonic clock (<see cref="Stopwatch"/>), not the heap's
    /// <see cref="TimeProvider"/>: it bounds a wait for another thread, and a test clock that never advances must not
    /// turn it into a hang.
    /// </summary>
    /// <exception cref="InvalidBlockHandleException">A block was freed (or its handle is bad).</exception>
    /// <exception cref="OutOfMemoryException">No unmovable memory is left for one of the blocks.</exception>
    /// <exception cref="InvalidOperationException">A block stayed held in place for the patience; or its owner callback
    /// holds it frozen on this thread; or it holds the maximum of atomic pins.</exception>
    public void PinAll(ReadOnlySpan<BlockHandle> handles, Span<long> states)
    {
        int n = handles.Length;
        Debug.Assert(states.Length >= n);
        states[..n].Clear();
        uint[]? heapIndices = n > 128 ? new uint[2 * n] : null;   // large batches: the index lists on the managed heap
        Span<uint> indices = heapIndices != null ? heapIndices.AsSpan(0, n) : stackalloc uint[n];
        Span<uint> queue = heapIndices != null ? heapIndices.AsSpan(n, n) : stackalloc uint[n];
        Span<MigrateResult> results = n <= 128 ? stackalloc MigrateResult[n] : new MigrateResult[n];
        for (int k = 0; k < n; k++) indices[k] = HandleBits.Index(handles[k].Value);
        int pinned = 0;
        bool released = false;   // parked storage was given back once already
        long deadline = Stopwatch.GetTimestamp() + (long)(_patience.TotalSeconds * Stopwatch.Frequency);
        try
        {
            SpinWait spin = default;
            while (pinned < n)
            {
                // The pass: unmovable blocks are pinned at once; movable ones are queued for one migration batch.
                int queued = 0;
                for (int k = 0; k < n; k++)
                {
                    if (states[k] != 0) continue;
                    HandleEntry* e = Locate(handles[k]);
                    long s = Volatile.Read(ref e->State);
                    HandleChecks.CheckLive(handles[k], s);
                    if ((s & EntryState.Movable) == 0) { states[k] = Pin(handles[k], e); pinned++; continue; }
                    // An owner callback of this thread holds the block frozen for its move: the migration that would
                    // move it again could never freeze it, so this would retry for ever (every pin path checks this).
                    if ((s & EntryState.Frozen) != 0) FrozenByThisThread.ThrowIfFrozenHere(e);
                    queue[queued++] = indices[k];
                }
                if (queued == 0) break;
                _migrator.Demote(queue[..queued], results[..queued], out long bytes);
                int q = 0;
                bool retry = false, heldByPin = false, heldByOwner = false;
                for (int k = 0; k < n; k++)
                {
                    if (states[k] != 0) continue;
                    MigrateResult r = results[q++];
                    switch (r)
                    {
                        case MigrateResult.Success:
                            Interlocked.Increment(ref _counts.Migrations);
                            goto case MigrateResult.NotMovable;
                        case MigrateResult.NotMovable:
                            // Unmovable now, so nothing moves it again: the pin only keeps it from being freed.
                            states[k] = Pin(handles[k], Locate(handles[k]));
                            pinned++;
                            break;
                        case MigrateResult.NoMemory:
                            // As an allocation does before it fails: storage parked in thread caches and the depot,
                            // and empty slabs kept for reuse, are given back, and the pass is tried once more.
                            if (!released && _paths.ReleaseParkedStorage()) { released = true; retry = true; break; }
                            throw new OutOfMemoryException($"No unmovable memory is left to move {handles[k]} into for a long-term pin.");
                        case MigrateResult.Pinned:
                            retry = heldByPin = true;   // a pin may be held for ever: this waits the patience at most
                            break;
                        case MigrateResult.OwnerRetry:
                        case MigrateResult.OwnerFailed:
                            // The block's movable owner refused, answered "try again" or threw: it may do so for ever,
                            // so this waits the patience at most, as for a pin.
                            retry = heldByOwner = true;
                            break;
                        default:
                            retry = true;   // frozen by a migration or moved meanwhile: always short, the next pass tries again
                            break;
                    }
                }
                Interlocked.Add(ref _counts.BytesMoved, bytes);
                if (bytes > 0 && Events.IsEnabled(EventLevel.Informational, NativeHeapEventSource.Keywords.LongTermPin))
                {
                    int movedNow = 0;
                    foreach (MigrateResult r in results[..queued]) if (r == MigrateResult.Success) movedNow++;
                    Events.LongTermPinMigration(_id, movedNow, bytes);
                }
                if (!retry) continue;
                if ((heldByOwner || heldByPin) && Stopwatch.GetTimestamp() > deadline)
                    throw new InvalidOperationException(heldByOwner
                        ? $"The block's movable owner refused to let it move for {_patience.TotalMilliseconds} ms, so it could not be moved out of movable memory for a long-term pin."
                        : $"A block stayed pinned for {_patience.TotalMilliseconds} ms, so it could not be moved out of movable memory for a long-term pin; release short pins before pinning long-term.");
                spin.SpinOnce();
            }
        }
        catch
        {
            Interlocked.Increment(ref _counts.Failures);
            for (int k = 0; k < n; k++)
            {
                if (states[k] == 0) continue;
                Unpin(HandleStore.Get(indices[k]));
                states[k] = 0;
            }
            throw;
        }
    }

    /// <summary>The entry of a block the caller checked: this heap's, or a bad handle.</summary>
    private HandleEntry* Locate(BlockHandle handle)
    {
        HandleEntry* e = HandleChecks.TryLocate(handle, _id);
        if (e == null) HandleChecks.ThrowNotLocated(handle);
        return e;
    }

    /// <summary>The atomic pin of a long-term pin, on a block that is unmovable now (so it does not move again): waits
    /// while a migration holds the entry frozen (a copy's time). Returns the state word it pinned.</summary>
    private long Pin(BlockHandle handle, HandleEntry* e)
    {
        long s;
        FrozenWait wait = default;
        while (!AtomicPins.TryAcquire(handle, e, _map, out s)) wait.Once(e);
        Interlocked.Increment(ref _counts.Held);
        Debug.Assert((Volatile.Read(ref e->State) & EntryState.Movable) == 0, "a long-term pin holds an unmovable block");
        return s | EntryState.Allocated;   // nonzero: the word of a live block
    }

    /// <summary>Drops a long-term pin's atomic pin and its count (a refused batch's, or a released pin's).</summary>
    public void Unpin(HandleEntry* e)
    {
        try
        {
            AtomicPins.Release(e, _map);
        }
        finally
        {
            Interlocked.Decrement(ref _counts.Held);   // the record's generation CAS made this the pin's one release
        }
    }
}
