using System.Buffers;
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
/// <para>The pool keeps no buffers of its own: returned memory goes back to the heap, whose thread caches serve the
/// next rent at once, and whose background thread gives idle memory back to the OS (wholly free pageblocks after
/// <see cref="HeapOptions.DecommitDelay"/>, free runs one to two delays after their last use, or at once above
/// <see cref="HeapOptions.RetainedBytesLimit"/>) once <see cref="NativeHeap.StartBackgroundCompaction"/> runs.</para>
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
    }

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

    /// <summary>
    /// Rents a pinned native buffer of at least <paramref name="minBufferSize"/> bytes (exactly that many; the
    /// <see cref="ArenaMemoryPoolOptions.DefaultBufferSize"/> for -1). Dispose the owner to return it.
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
        Interlocked.Increment(ref _rented);
        Interlocked.Add(ref _rentedBytes, size);
        Interlocked.Increment(ref _rents);
        if (_metrics.Enabled) _metrics.Rented(size, _owner);
        return new ArenaPoolBuffer(this, h, pin);
    }

    /// <summary>Called by a buffer whose block was released: it no longer counts as rented.</summary>
    internal void Returned(int bytes)
    {
        Interlocked.Decrement(ref _rented);
        Interlocked.Add(ref _rentedBytes, -bytes);
        if (_metrics.Enabled) _metrics.Returned(bytes, _owner);
    }

    /// <summary>Stops further rents; buffers still rented stay valid until they are returned.</summary>
    protected override void Dispose(bool disposing) => _disposed = true;
}
