namespace Compaction.Allocator.Diagnostics;

/// <summary>
/// Exceptions that ended a heap's background thread: how many, and the last one as "type: message". Written by the
/// failing thread (the count with an interlocked add, the text with a release store), read racily by the statistics
/// (the count and the text may be one failure apart).
/// </summary>
internal sealed class BackgroundFailures
{
    private long _count;
    private string? _last;

    /// <summary>Failures so far.</summary>
    public long Count => Volatile.Read(ref _count);

    /// <summary>The last failure, "type: message"; null before the first.</summary>
    public string? Last => Volatile.Read(ref _last);

    /// <summary>Counts one failure. Allocates nothing, so it holds even when what failed was a managed allocation.</summary>
    public void Increment() => Interlocked.Increment(ref _count);

    /// <summary>Records the failure's text (allocates: the caller tolerates an exception here).</summary>
    public void Record(Exception ex) => Volatile.Write(ref _last, $"{ex.GetType().FullName}: {ex.Message}");
}
