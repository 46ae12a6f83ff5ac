using System.Buffers;
using System.Collections.Concurrent;
using Compaction.Allocator;

namespace Compaction.Interop;

/// <summary>Settings of an <see cref="ArenaMemoryPool"/>.</summary>
public sealed class ArenaMemoryPoolOptions
{
    /// <summary>The size of a buffer rented with <c>Rent()</c> or <c>Rent(-1)</c>. Default 4096 (Kestrel's and
    /// Pipelines' segment size).</summary>
    public int DefaultBufferSize { get; set; } = 4096;

    /// <summary>The largest buffer <see cref="MemoryPool{T}.Rent"/> hands out (<see cref="MemoryPool{T}.MaxBufferSize"/>).
    /// Default 0: as large as the heap's largest block and a <see cref="Memory{T}"/> allow.</summary>
    public int MaxBufferSize { get; set; }

    /// <summary>
    /// Whether rented buffers are long-term pinned: true for buffers handed to the OS for an unbounded time (socket
    /// receive buffers that wait for data, the buffers a server's transport keeps), false (the default) for buffers
    /// used for a short while (a parse, a copy, a write). A long-term buffer is allocated in unmovable memory and
    /// pinned with <see cref="NativeHeap.PinLongTerm(BlockHandle)"/>, so it never holds a pageblock of the movable zone
    /// in place; a short-term one is a movable block held by an atomic pin (<see cref="NativeHeap.AcquirePin"/>) for
    /// the rent, which the compactor skips cheaply and which is compactable again once it is returned.
    /// </summary>
    public bool LongTermPins { get; set; }

    /// <summary>The owner named by the pool's metrics (tag <c>aspnetcore.memory_pool.owner</c>, as Kestrel tags its
    /// pools "kestrel"); null for no tag.</summary>
    public string? Owner { get; set; }

    /// <summary>Where the pool's meter (<c>Microsoft.AspNetCore.MemoryPool</c>) comes from: a host's
    /// <see cref="System.Diagnostics.Metrics.IMeterFactory"/>, or null (the default) for the library's own static
    /// meter of that name.</summary>
    public System.Diagnostics.Metrics.IMeterFactory? MeterFactory { get; set; }

    /// <summary>
    /// How many returned buffers of <see cref="DefaultBufferSize"/> the pool keeps, pinned, for the next rents.
    /// Default 0: every return frees its block to the heap at once. A server's transport rents and returns a few
    /// buffers per request; a kept buffer is handed out again without the heap's allocation and pin (about 0.7 us a
    /// rent and return on the project's machines, against a queue operation). With a cache, every rent of at most
    /// the default size gets a buffer of the default size, and buffers nobody rented for a whole
    /// <see cref="CacheTrimPeriod"/> go back to the heap (counted under <c>aspnetcore.memory_pool.evicted</c>).
    /// </summary>
    public int CachedBuffers { get; set; }

    /// <summary>How often a pool with a cache gives back the buffers it kept that were not rented since the last time
    /// (the fewest the cache held during the period). Default 10 s. <see cref="Timeout.InfiniteTimeSpan"/> never
    /// trims (the cache then keeps up to <see cref="CachedBuffers"/> until the pool is disposed).</summary>
    public TimeSpan CacheTrimPeriod { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Whether a period of <see cref="CacheTrimPeriod"/> without any rent also returns the heap's free memory
    /// to the OS (<see cref="NativeHeap.ReleaseFreeMemory"/>, once per idle spell), so a server that went idle gives its
    /// memory back even without the heap's background thread. Default false. The release runs on the trim timer,
    /// with or without a cache.</summary>
    public bool ReleaseFreeMemoryWhenIdle { get; set; }

    /// <summary>The clock of the trim timer (null: <see cref="TimeProvider.System"/>).</summary>
    public TimeProvider? TimeProvider { get; set; }
}

/// <summary>
/// A <see cref="MemoryPool{T}"/> of native buffers from a <see cref="NativeHeap"/>, for System.IO.Pipelines
/// (<c>PipeOptions.Pool</c>), sockets, files and Kestrel (through <see cref="ArenaMemoryPoolFactory"/>).
/// </summary>
/// <remarks>
/// <para>Each rent is a block of the heap, pinned for as long as it is rented (see
/// <see cref="ArenaMemoryPoolOptions.LongTermPins"/>), so <see cref="Memory{T}.Span"/> and
/// <see cref="Memory{T}.Pin"/> are always safe, from any thread and across <c>await</c>. Returning a buffer
/// (disposing its <see cref="IMemoryOwner{T}"/>) unpins and frees the block; a buffer whose memory native code still
/// holds through a <see cref="MemoryHandle"/> is freed when the last handle is disposed. A returned buffer is dead:
/// touching it throws <see cref="ObjectDisposedException"/>, returning it again throws
/// <see cref="InvalidOperationException"/> (never a double free), and no later rent reuses the object.</para>
/// <para>By default the pool keeps no buffers of its own: returned memory goes back to the heap, whose thread caches
/// serve the next rent at once, and whose background thread gives idle memory back to the OS (wholly free pageblocks
/// after <see cref="HeapOptions.DecommitDelay"/>, free runs one to two delays after their last use, or at once above
/// <see cref="HeapOptions.RetainedBytesLimit"/>) once <see cref="NativeHeap.StartBackgroundCompaction"/> runs. With
/// <see cref="ArenaMemoryPoolOptions.CachedBuffers"/> it keeps up to that many returned buffers of the default size,
/// pinned, for the next rents, and gives back every <see cref="ArenaMemoryPoolOptions.CacheTrimPeriod"/> those a
/// period did not need; dispose such a pool (its trim timer roots it) before its heap.</para>
/// <para>Metrics: the pool reports under Kestrel's names (meter <c>Microsoft.AspNetCore.MemoryPool</c>,
/// <c>aspnetcore.memory_pool.rented</c>, <c>.allocated</c>, <c>.evicted</c>, <c>.pooled</c>, in bytes; see
/// <see cref="ArenaMemoryPoolOptions.Owner"/> and <see cref="ArenaMemoryPoolOptions.MeterFactory"/>).</para>
/// <para>Thread safety: every member may be called from any thread. The pool does not own the heap: disposing the
/// pool stops further rents; buffers still rented stay valid until returned.</para>
/// </remarks>
public sealed class ArenaMemoryPool : MemoryPool<byte>
{
    private readonly NativeHeap _heap;
    private readonly int _defaultSize;
    private readonly int _maxSize;
    private readonly bool _longTerm;
    private readonly string? _owner;
    private readonly ArenaPoolMetrics _metrics;
    private readonly ConcurrentQueue<CachedBlock>? _cache;   // null without a cache
    private readonly int _cacheLimit;
    private readonly bool _releaseWhenIdle;
    private readonly ITimer? _trimTimer;
    private int _cached;        // buffers in _cache (changed with Interlocked next to each enqueue and dequeue)
    private int _lowWater;      // the fewest _cached held since the last trim (see Trim)
    private long _rentsAtTrim;  // _rents at the last trim: equal at the next one means a period without rents
    private bool _released;     // the idle release ran, and no rent came since (trim timer's callback only)
    private long _rented;
    private long _rentedBytes;
    private long _rents;
    private volatile bool _disposed;

    /// <summary>A pool over <paramref name="heap"/> (which it does not own).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="heap"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A size in <paramref name="options"/> is not positive (or above the
    /// heap's largest block).</exception>
    public ArenaMemoryPool(NativeHeap heap, ArenaMemoryPoolOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(heap);
        options ??= new ArenaMemoryPoolOptions();
        long largest = Math.Min(int.MaxValue, heap.MaxBlockSize);
        if (options.MaxBufferSize < 0 || options.MaxBufferSize > largest)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxBufferSize, $"MaxBufferSize must be from 1 to {largest}, or 0 for that largest size.");
        _maxSize = options.MaxBufferSize == 0 ? (int)largest : options.MaxBufferSize;
        if (options.DefaultBufferSize <= 0 || options.DefaultBufferSize > _maxSize)
            throw new ArgumentOutOfRangeException(nameof(options), options.DefaultBufferSize, $"DefaultBufferSize must be from 1 to MaxBufferSize ({_maxSize}).");
        _heap = heap;
        _defaultSize = options.DefaultBufferSize;
        _longTerm = options.LongTermPins;
        _owner = options.Owner;
        _metrics = ArenaPoolMetrics.For(options.MeterFactory);
        if (options.CachedBuffers < 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.CachedBuffers, "CachedBuffers must not be negative.");
        if (options.CachedBuffers > 0)
        {
            _cache = new ConcurrentQueue<CachedBlock>();
            _cacheLimit = options.CachedBuffers;
        }
        _releaseWhenIdle = options.ReleaseFreeMemoryWhenIdle;
        TimeSpan period = options.CacheTrimPeriod;
        if (period != Timeout.InfiniteTimeSpan && period <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(options), period, "CacheTrimPeriod must be positive, or Timeout.InfiniteTimeSpan.");
        if ((_cache != null || _releaseWhenIdle) && period != Timeout.InfiniteTimeSpan)
        {
            // The scheduled timer roots the pool until Dispose stops it (as it frees the kept blocks, whose pins
            // would otherwise hold the heap).
            _trimTimer = (options.TimeProvider ?? TimeProvider.System).CreateTimer(
                static state => ((ArenaMemoryPool)state!).TrimTick(), this, period, period);
        }
    }

    /// <summary>A block the cache keeps: allocated, pinned, of the default size.</summary>
    private readonly record struct CachedBlock(BlockHandle Handle, BlockPin Pin);

    /// <summary>The heap the buffers come from.</summary>
    public NativeHeap Heap => _heap;

    /// <summary>True when rented buffers are long-term pinned (<see cref="ArenaMemoryPoolOptions.LongTermPins"/>).</summary>
    public bool LongTermPins => _longTerm;

    /// <inheritdoc/>
    public override int MaxBufferSize => _maxSize;

    /// <summary>Buffers rented and not yet returned (or returned while native code still holds them).</summary>
    public long RentedBuffers => Volatile.Read(ref _rented);

    /// <summary>Bytes of the buffers counted in <see cref="RentedBuffers"/>.</summary>
    public long RentedBytes => Volatile.Read(ref _rentedBytes);

    /// <summary>Rents since the pool was created.</summary>
    public long Rents => Volatile.Read(ref _rents);

    /// <summary>Returned buffers the pool keeps for the next rents (see <see cref="ArenaMemoryPoolOptions.CachedBuffers"/>);
    /// they are blocks of the heap, pinned, and count as live memory of the heap.</summary>
    public int CachedBuffers => Volatile.Read(ref _cached);

    /// <summary>
    /// Rents a pinned native buffer of at least <paramref name="minBufferSize"/> bytes (exactly that many; the
    /// <see cref="ArenaMemoryPoolOptions.DefaultBufferSize"/> for -1; with a cache, the default size for any size up to
    /// it, served from the cache when it holds one). Dispose the owner to return it.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="minBufferSize"/> is below -1 or above
    /// <see cref="MaxBufferSize"/>.</exception>
    /// <exception cref="OutOfMemoryException">The heap cannot serve the buffer.</exception>
    /// <exception cref="ObjectDisposedException">The pool or its heap was disposed.</exception>
    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (minBufferSize < -1 || minBufferSize > _maxSize)
            throw new ArgumentOutOfRangeException(nameof(minBufferSize), minBufferSize, $"A buffer must be from 0 to {_maxSize} bytes (-1 for the default size).");
        int size = minBufferSize <= 0 ? (minBufferSize == 0 ? 1 : _defaultSize) : minBufferSize;
        if (_cache != null && size <= _defaultSize)
        {
            size = _defaultSize;
            if (_cache.TryDequeue(out CachedBlock kept))
            {
                int left = Interlocked.Decrement(ref _cached);
                // A plain write racing other rents and the trim: the low-water mark only sizes the next trim, and a
                // stale one evicts a buffer more or less, never one that is rented.
                if (left < _lowWater) _lowWater = left;
                Counted(size, allocated: false);
                if (_metrics.Enabled) _metrics.Unpooled(size, _owner);
                return new ArenaPoolBuffer(this, kept.Handle, kept.Pin);
            }
            _lowWater = 0;   // a miss: every kept buffer was in use at that moment
        }
        BlockHandle h = _heap.Allocate(size, _longTerm ? BlockKind.Unmovable : BlockKind.Movable);
        BlockPin pin;
        try
        {
            pin = _longTerm ? _heap.PinLongTerm(h) : _heap.AcquirePin(h);
        }
        catch
        {
            _heap.Free(h);
            throw;
        }
        Counted(size, allocated: true);
        return new ArenaPoolBuffer(this, h, pin);
    }

    private void Counted(int size, bool allocated)
    {
        Interlocked.Increment(ref _rented);
        Interlocked.Add(ref _rentedBytes, size);
        Interlocked.Increment(ref _rents);
        if (_metrics.Enabled) _metrics.Rented(size, _owner, allocated);
    }

    /// <summary>Called once by a buffer that was returned and holds no <see cref="MemoryHandle"/> any more: the cache
    /// keeps its block when it has room (a block of the default size, the pool not disposed), else the block is
    /// unpinned and freed.</summary>
    internal void Release(BlockHandle handle, BlockPin pin, int length)
    {
        try
        {
            // The room check and the increment are two steps: returns racing on other threads may overshoot the
            // limit by one buffer each, which the next trims give back.
            if (_cache != null && length == _defaultSize && !_disposed && Volatile.Read(ref _cached) < _cacheLimit)
            {
                Interlocked.Increment(ref _cached);
                _cache.Enqueue(new CachedBlock(handle, pin));
                if (_metrics.Enabled) _metrics.Pooled(length, _owner);
                // A Dispose that set the flag after the check above may have drained the cache already: drain again,
                // so no block stays kept by a disposed pool (either drain frees each block once: a dequeue is exclusive).
                if (_disposed) Drain(int.MaxValue);
                return;
            }
            Free(handle, pin, length);
        }
        finally
        {
            Returned(length);
        }
    }

    private void Free(BlockHandle handle, BlockPin pin, int length)
    {
        try
        {
            pin.Dispose();
            _heap.Free(handle);
        }
        finally
        {
            if (_metrics.Enabled) _metrics.Evicted(length, _owner);   // left the pool, even if the heap was disposed meanwhile
        }
    }

    /// <summary>Frees up to <paramref name="count"/> kept blocks; returns how many.</summary>
    private int Drain(int count)
    {
        int freed = 0;
        while (freed < count && _cache!.TryDequeue(out CachedBlock kept))
        {
            Interlocked.Decrement(ref _cached);
            if (_metrics.Enabled) _metrics.Unpooled(_defaultSize, _owner);
            Free(kept.Handle, kept.Pin, _defaultSize);
            freed++;
        }
        return freed;
    }

    /// <summary>
    /// The trim timer's work: frees the kept buffers nobody needed during the period (the fewest the cache held), and
    /// after a period without any rent, when <see cref="ArenaMemoryPoolOptions.ReleaseFreeMemoryWhenIdle"/> is set,
    /// returns the heap's free memory to the OS once. Never throws (it runs on a timer): a heap disposed meanwhile
    /// ends the work.
    /// </summary>
    internal void TrimTick()
    {
        if (_disposed) return;
        try
        {
            if (_cache != null)
            {
                int unused = Math.Min(_lowWater, Volatile.Read(ref _cached));
                _lowWater = Volatile.Read(ref _cached) - unused;   // the next period starts from what stays
                Drain(unused);
            }
            long rents = Volatile.Read(ref _rents);
            bool idle = rents == _rentsAtTrim;
            _rentsAtTrim = rents;
            if (!idle) _released = false;
            else if (_releaseWhenIdle && !_released)
            {
                _released = true;
                _heap.ReleaseFreeMemory();
            }
        }
        catch (ObjectDisposedException)
        {
            // the heap was disposed under the pool: nothing is left to give back
        }
    }
    /// <summary>A buffer was released (kept or freed): it no longer counts as rented.</summary>
    private void Returned(int bytes)
    {
        Interlocked.Decrement(ref _rented);
        Interlocked.Add(ref _rentedBytes, -bytes);
    }

    /// <summary>Stops further rents and frees the kept buffers; buffers still rented stay valid until they are
    /// returned (then freed, not kept).</summary>
    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        _trimTimer?.Dispose();
        if (_cache != null) Drain(int.MaxValue);
    }
}
