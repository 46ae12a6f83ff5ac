using System.Runtime.CompilerServices;
using Compaction.Allocator.Handles;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator;

// Handle validation at the public boundary (native-layout.md, "Handle table and handles").
public sealed unsafe partial class NativeHeap
{
    /// <summary>True when <paramref name="handle"/> names a live block of this heap (never throws, except when disposed).</summary>
    /// <exception cref="ObjectDisposedException">The heap was disposed.</exception>
    public bool IsLive(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        HandleEntry* e = TryLocate(handle);
        return e != null && HandleChecks.IsLive(handle, Volatile.Read(ref e->State));
    }

    /// <summary>Checks that the handle's index lies in a chunk of this heap and returns its entry (not yet its
    /// generation): the caller's generation check decides whether it is live.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* Locate(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        HandleEntry* e = TryLocate(handle);
        if (e == null) LocateFailedOrDisposed(handle);
        return e;
    }

    /// <summary>A handle this heap does not own: the heap was disposed meanwhile (its chunks went back to the store,
    /// so a handle that passed the disposed check finds a foreign owner), or a bad handle.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void LocateFailedOrDisposed(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        LocateFailed(handle);
    }

    /// <summary><see cref="Locate"/> for a caller that has just checked the heap is not disposed (a context).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* LocateLive(BlockHandle handle)
    {
        HandleEntry* e = TryLocate(handle);
        if (e == null) LocateFailedOrDisposed(handle);
        return e;
    }

    /// <summary>
    /// The entry of the handle's index when its chunk belongs to this heap, else null (index 0 included).
    /// Cost: one compare for the range, one load of the chunk's owner word (compared with this heap's id), one add
    /// for the entry's address in the flat table.
    /// Lock-free: the owner word is read with acquire, and a chunk is committed and initialised before any owner is
    /// published (<see cref="HandleStore"/>); a chunk of this heap stays this heap's until Dispose gives it back. A
    /// Dispose racing this read is harmless: the store is never unmapped, and an entry Dispose freed is stale for
    /// every handle this heap issued.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private HandleEntry* TryLocate(BlockHandle handle)
    {
        uint index = HandleBits.Index(handle.Value);
        if (index - 1 >= HandleStore.MaxEntries - 1) return null;   // index 0 or beyond the table: one compare
        if (Volatile.Read(ref HandleStore.OwnerWord(index)) != _id) return null;
        return HandleStore.Base + index;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void LocateFailed(BlockHandle handle)
    {
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (v == 0) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Null);
        if (index == 0 || index >= HandleStore.Count) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Forged);
        // A made chunk that another heap owns, or that a disposed heap gave back.
        ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Foreign);
    }
}
