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
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (HandleBits.Tag(v) != _tag || index == 0 || index >= _handles.Count) return false;
        return HandleChecks.IsLive(handle, Volatile.Read(ref _handles.Get(index)->State));
    }

    /// <summary>Checks the tag and index of a handle and returns its entry (not yet its generation).
    /// Lock-free: the table never shrinks and never moves an entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal HandleEntry* Locate(BlockHandle handle)
    {
        if (_disposed) ThrowHelper.Disposed();
        ulong v = handle.Value;
        uint index = HandleBits.Index(v);
        if (HandleBits.Tag(v) != _tag || index == 0 || index >= _handles.Count) LocateFailed(handle);
        return _handles.Get(index);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void LocateFailed(BlockHandle handle)
    {
        ulong v = handle.Value;
        if (v == 0) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Null);
        if (HandleBits.Tag(v) != _tag) ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Foreign);
        ThrowHelper.InvalidHandle(handle, InvalidHandleReason.Forged);
    }

    /// <summary>The handle this heap issued for entry <paramref name="index"/> in state <paramref name="state"/>.</summary>
    private BlockHandle HandleOf(uint index, long state) => new(HandleBits.Encode(_tag, EntryState.Generation(state), index));
}
