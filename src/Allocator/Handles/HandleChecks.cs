using System.Runtime.CompilerServices;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Handles;

/// <summary>
/// The generation check, written once: does a state word describe the live block a handle names?
/// (native-layout.md, "Handle table and handles").
/// </summary>
internal static class HandleChecks
{
    /// <summary>True when <paramref name="state"/> is allocated with the generation <paramref name="handle"/> carries.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsLive(BlockHandle handle, long state) =>
        (state & EntryState.Allocated) != 0 && EntryState.Generation(state) == HandleBits.Generation(handle.Value);

    /// <summary>
    /// The state word bits a fast path compares in one go: <c>((state ^ Expected(handle)) &amp; mask) == 0</c> holds
    /// exactly when the block is allocated with the handle's generation and every other bit in <c>mask</c> is clear
    /// (pins, freeze, run, owner: whatever sends the caller to its slow path).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Expected(BlockHandle handle) => (long)(handle.Value & unchecked((ulong)EntryState.GenerationMask)) | EntryState.Allocated;

    /// <summary>
    /// The entry of the handle's index when its chunk belongs to the heap <paramref name="owner"/> (its id), else null
    /// (index 0 included): the heap's entry check before any generation check.
    /// Cost: one compare for the range, one load of the chunk's owner word, one add for the entry's address.
    /// Lock-free: the owner word is read with acquire, and a chunk is committed and initialised before any owner is
    /// published (<see cref="HandleStore"/>); a chunk of a heap stays that heap's until its Dispose gives it back. A
    /// Dispose racing this read is harmless: the store is never unmapped, and an entry Dispose freed is stale for
    /// every handle that heap issued.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe HandleEntry* TryLocate(BlockHandle handle, long owner)
    {
        uint index = HandleBits.Index(handle.Value);
        if (index - 1 >= HandleStore.MaxEntries - 1) return null;   // index 0 or beyond the table: one compare
        if (Volatile.Read(ref HandleStore.OwnerWord(index)) != owner) return null;
        return HandleStore.Base + index;
    }

    /// <summary>Throws the <see cref="InvalidBlockHandleException"/> of a handle <see cref="TryLocate"/> refused:
    /// null, forged (index 0 or past the table's made entries) or foreign (a chunk another heap owns, or that a
    /// disposed heap gave back).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void ThrowNotLocated(BlockHandle handle)
    {
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (v == 0) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Null);
        if (index == 0 || index >= HandleStore.Count) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Forged);
        ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Foreign);
    }

    /// <summary>Throws <see cref="InvalidBlockHandleException"/> (Stale) unless <paramref name="state"/> is the live
    /// block <paramref name="handle"/> names.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void CheckLive(BlockHandle handle, long state)
    {
        if (!IsLive(handle, state)) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Stale);
    }
}

/// <summary>
/// The entry this thread holds frozen while a movable owner's callback runs (one per callback: owned blocks migrate
/// one at a time; a callback that migrates another block nests). Waiting for that entry to unfreeze would wait for
/// ourselves, so pins, frees and owner changes of it throw.
/// </summary>
internal static unsafe class FrozenByThisThread
{
    [ThreadStatic] private static HandleEntry* t_entry;

    /// <summary>True while an owner callback runs on this thread with a block frozen.</summary>
    public static bool Any => t_entry != null;

    /// <summary>Records <paramref name="e"/> as frozen by this thread; returns the entry recorded before (nesting).</summary>
    public static HandleEntry* Enter(HandleEntry* e)
    {
        HandleEntry* outer = t_entry;
        t_entry = e;
        return outer;
    }

    /// <summary>True when the calling thread's innermost owner callback holds <paramref name="e"/> frozen.</summary>
    public static bool Holds(HandleEntry* e) => t_entry == e;

    /// <summary>Restores the entry <see cref="Enter"/> returned.</summary>
    public static void Exit(HandleEntry* outer) => t_entry = outer;

    /// <summary>Throws when the calling thread is inside an owner callback for <paramref name="e"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void ThrowIfFrozenHere(HandleEntry* e)
    {
        if (t_entry == e)
            throw new InvalidOperationException("A movable-owner callback may not pin, free or re-own the block being migrated.");
    }
}
