namespace Compaction.Allocator.Compaction;

/// <summary>
/// Deferral of direct compaction after failures (the kernel's compaction_deferred, defer_compaction and
/// compaction_defer_reset): after a failure at some order, requests of that order or more skip compaction for
/// 2^shift attempts, shift growing to <see cref="MaxDeferShift"/>. Protected by the compactor's RunLock.
/// </summary>
internal sealed class CompactionDeferral
{
    /// <summary>COMPACT_MAX_DEFER_SHIFT: at most 64 attempts skipped.</summary>
    public const int MaxDeferShift = 6;

    private int _considered, _deferShift, _orderFailed;

    public CompactionDeferral(int maxOrder) => _orderFailed = maxOrder + 1;

    /// <summary>compaction_deferred: true when a request of <paramref name="order"/> should skip compaction now.</summary>
    public bool Deferred(int order)
    {
        if (order < _orderFailed) return false;
        int limit = 1 << _deferShift;
        if (++_considered >= limit) { _considered = limit; return false; }
        return true;
    }

    /// <summary>defer_compaction: a compaction for <paramref name="order"/> failed.</summary>
    public void Defer(int order)
    {
        _considered = 0;
        if (++_deferShift > MaxDeferShift) _deferShift = MaxDeferShift;
        if (order < _orderFailed) _orderFailed = order;
    }

    /// <summary>compaction_defer_reset after a success at <paramref name="order"/>.</summary>
    public void Reset(int order)
    {
        _considered = 0;
        _deferShift = 0;
        if (order >= _orderFailed) _orderFailed = order + 1;
    }

    /// <summary>compaction_restarting: deferred to the maximum and the attempts used up — time to reset skip bits.</summary>
    public bool Restarting(int order) =>
        order >= _orderFailed && _deferShift == MaxDeferShift && _considered >= 1 << _deferShift;

    /// <summary>(considered, defer shift, order failed).</summary>
    public (int considered, int shift, int orderFailed) State => (_considered, _deferShift, _orderFailed);
}
