using System.Diagnostics;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;
using Compaction.Allocator.Migration;
using Compaction.Allocator.Pins;

namespace Compaction.Allocator;

// Long-term pins (the kernel's FOLL_LONGTERM): pins for memory handed to the OS or to native code for an unbounded
// time, which first move the block out of movable memory. native-layout.md, "Long-term pins".
public sealed unsafe partial class NativeHeap
{
    /// <summary>How long a long-term pin waits for a block that a short or atomic pin holds in place before it gives
    /// up (<see cref="InvalidOperationException"/>). A block a migration holds frozen is waited for without a limit:
    /// a migration always ends (a copy's time), however long a loaded machine takes to schedule it.</summary>
    public static readonly TimeSpan LongTermPinPatience = TimeSpan.FromMilliseconds(20);

    private long _longTermPins;            // long-term pins held now
    private long _longTermPinMigrations;   // blocks moved into unmovable memory for a long-term pin
    private long _longTermPinBytesMoved;
    private long _longTermPinFailures;     // long-term pins refused (no unmovable room, or the block held in place)

    /// <summary>
    /// Pins a block for an unbounded time, for memory handed to the OS or to native code (a socket's or a file's
    /// buffer, a C library's state). A movable block is first migrated into unmovable memory (the normal zone's
    /// unmovable pageblocks, through the migration protocol, so a concurrent pin or compaction is handled as usual)
    /// and stays there, <b>unmovable for the rest of its life</b>: <see cref="GetKind"/> reports
    /// <see cref="BlockKind.Unmovable"/> and <see cref="GetStablePointer"/> works, before and after the pin is
    /// released. So a long-term pin never holds a pageblock of the movable zone in place, and the compactor never
    /// meets one. An unmovable block is pinned where it is. Release with <see cref="BlockPin.Dispose"/>, from any thread.
    /// </summary>
    /// <remarks>Cost: an unmovable block costs what <see cref="AcquirePin"/> does; a movable one is first copied into
    /// unmovable memory and pays a migration batch's process-wide barrier (tens of microseconds on these 2-core VMs;
    /// a batch through <see cref="PinLongTerm(ReadOnlySpan{BlockHandle}, Span{BlockPin})"/> pays one for all). A block
    /// held in place by another pin is waited for, up to <see cref="LongTermPinPatience"/>.</remarks>
    /// <exception cref="InvalidBlockHandleException">The handle is null, foreign, forged or stale.</exception>
    /// <exception cref="OutOfMemoryException">No unmovable memory is left for the block (the normal zone is full);
    /// nothing changed.</exception>
    /// <exception cref="InvalidOperationException">The block stayed pinned in place (a <see cref="PinScope"/> or a
    /// <see cref="BlockPin"/>) for <see cref="LongTermPinPatience"/>: release short pins before pinning long-term; or
    /// its movable owner refused the move (Isolate false, Migrate TryAgain, or an exception) for as long; or it
    /// already holds the maximum of atomic pins.</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public BlockPin PinLongTerm(BlockHandle handle)
    {
        Span<BlockPin> pin = [default];
        PinLongTerm([handle], pin);
        return pin[0];
    }

    /// <summary>
    /// Long-term pins every block of <paramref name="handles"/> into <paramref name="pins"/> (same index), as
    /// <see cref="PinLongTerm(BlockHandle)"/> does for one, in one pass over the batch: each handle is checked and the
    /// movable ones are queued as it goes, then all of them migrate into unmovable memory together (one migration
    /// batch, one barrier), and each block is pinned as its move ends; no second scan checks the result. All or
    /// nothing: when one block cannot be pinned, the pins this call took are released and the exception thrown
    /// (blocks already moved stay unmovable). Whatever <paramref name="pins"/> held before is overwritten, not released.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="pins"/> is shorter than <paramref name="handles"/>.</exception>
    /// <exception cref="InvalidBlockHandleException">A handle is null, foreign, forged or stale (checked for all before any
    /// block is touched; a block freed by another thread during the call is reported the same way).</exception>
    /// <exception cref="OutOfMemoryException">No unmovable memory is left for one of the blocks.</exception>
    /// <exception cref="InvalidOperationException">A block stayed held in place (see <see cref="PinLongTerm(BlockHandle)"/>).</exception>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public void PinLongTerm(ReadOnlySpan<BlockHandle> handles, Span<BlockPin> pins)
    {
        if (pins.Length < handles.Length) throw new ArgumentException($"{pins.Length} pins for {handles.Length} handles.", nameof(pins));
        int n = handles.Length;
        // Every handle is checked before anything changes.
        for (int k = 0; k < n; k++) pins[k] = default;
        for (int k = 0; k < n; k++) Locate(handles[k]);
        using Section _ = new(_caches);   // the migrations into unmovable memory touch the arena
        uint[]? heapIndices = n > 128 ? new uint[2 * n] : null;   // large batches: the index lists on the managed heap
        Span<uint> indices = heapIndices != null ? heapIndices.AsSpan(0, n) : stackalloc uint[n];
        Span<uint> queue = heapIndices != null ? heapIndices.AsSpan(n, n) : stackalloc uint[n];
        Span<MigrateResult> results = n <= 128 ? stackalloc MigrateResult[n] : new MigrateResult[n];
        for (int k = 0; k < n; k++) indices[k] = HandleBits.Index(handles[k].Value);
        int pinned = 0;
        bool released = false;   // parked storage was given back once already
        long deadline = Stopwatch.GetTimestamp() + (long)(LongTermPinPatience.TotalSeconds * Stopwatch.Frequency);
        try
        {
            SpinWait spin = default;
            while (pinned < n)
            {
                // The pass: unmovable blocks are pinned at once; movable ones are queued for one migration batch.
                int queued = 0;
                for (int k = 0; k < n; k++)
                {
                    if (pins[k].IsHeld) continue;
                    HandleEntry* e = Locate(handles[k]);
                    long s = Volatile.Read(ref e->State);
                    HandleChecks.CheckLive(handles[k], s);
                    if ((s & EntryState.Movable) == 0) { pins[k] = AcquireLongTermPin(handles[k], e); pinned++; continue; }
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
                    if (pins[k].IsHeld) continue;
                    MigrateResult r = results[q++];
                    switch (r)
                    {
                        case MigrateResult.Success:
                            Interlocked.Increment(ref _longTermPinMigrations);
                            goto case MigrateResult.NotMovable;
                        case MigrateResult.NotMovable:
                            // Unmovable now, so nothing moves it again: the pin only keeps it from being freed.
                            pins[k] = AcquireLongTermPin(handles[k], Locate(handles[k]));
                            pinned++;
                            break;
                        case MigrateResult.NoMemory:
                            // As an allocation does before it fails: storage parked in thread caches and the depot,
                            // and empty slabs kept for reuse, are given back, and the pass is tried once more.
                            if (!released && ReleaseParkedStorage()) { released = true; retry = true; break; }
                            throw new OutOfMemoryException($"No unmovable memory is left to move {handles[k]} into for a long-term pin.");
                        case MigrateResult.Pinned:
                            retry = heldByPin = true;   // a pin may be held for ever: this waits LongTermPinPatience at most
                            break;
                        case MigrateResult.OwnerRetry:
                        case MigrateResult.OwnerFailed:
                            // The block's movable owner refused, answered "try again" or threw: it may do so for ever,
                            // so this waits LongTermPinPatience at most, as for a pin.
                            retry = heldByOwner = true;
                            break;
                        default:
                            retry = true;   // frozen by a migration or moved meanwhile: always short, the next pass tries again
                            break;
                    }
                }
                Interlocked.Add(ref _longTermPinBytesMoved, bytes);
                if (bytes > 0 && Tracing(NativeHeapEventSource.Keywords.LongTermPin))
                {
                    int movedNow = 0;
                    foreach (MigrateResult r in results[..queued]) if (r == MigrateResult.Success) movedNow++;
                    Events.LongTermPinMigration(_id, movedNow, bytes);
                }
                if (!retry) continue;
                if ((heldByOwner || heldByPin) && Stopwatch.GetTimestamp() > deadline)
                    throw new InvalidOperationException(heldByOwner
                        ? $"The block's movable owner refused to let it move for {LongTermPinPatience.TotalMilliseconds} ms, so it could not be moved out of movable memory for a long-term pin."
                        : $"A block stayed pinned for {LongTermPinPatience.TotalMilliseconds} ms, so it could not be moved out of movable memory for a long-term pin; release short pins before pinning long-term.");
                spin.SpinOnce();
            }
        }
        catch
        {
            Interlocked.Increment(ref _longTermPinFailures);
            for (int k = 0; k < n; k++)
            {
                pins[k].Dispose();
                pins[k] = default;
            }
            throw;
        }
    }

    /// <summary>The atomic pin of a long-term pin, on a block that is unmovable now (so it does not move again).</summary>
    private BlockPin AcquireLongTermPin(BlockHandle handle, HandleEntry* e)
    {
        BlockPin pin = AcquireBlockPin(handle, longTerm: true);
        Interlocked.Increment(ref _longTermPins);
        Debug.Assert((Volatile.Read(ref e->State) & EntryState.Movable) == 0, "a long-term pin holds an unmovable block");
        return pin;
    }

    /// <summary>Drops a long-term pin's atomic pin and its count.</summary>
    internal void ReleaseLongTermPin(HandleEntry* e)
    {
        try
        {
            ReleaseAtomicPin(e);
        }
        finally
        {
            Interlocked.Decrement(ref _longTermPins);   // the record's generation CAS made this the pin's one release
        }
    }
}
