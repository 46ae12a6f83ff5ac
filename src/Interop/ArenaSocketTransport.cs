using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;
using Compaction.Interop.Native;
using Microsoft.AspNetCore.Http.Features;

namespace Compaction.Interop;

/// <summary>
/// A socket transport for Kestrel (an <see cref="IConnectionListenerFactory"/>) whose connection buffers are arena
/// memory. Kestrel's own socket transport gathers a multi-buffer send through SocketAsyncEventArgs.BufferList, which
/// takes arrays, and throws "Buffer backed by array was expected" for native memory; this one gathers the pinned
/// segments of an answer into one <c>sendmsg</c> on Linux (segment by segment through
/// <see cref="Socket.SendAsync(ReadOnlyMemory{byte}, SocketFlags, CancellationToken)"/> elsewhere) and receives
/// straight into the pipe's arena buffers, so neither direction copies or needs an array.
/// Register it with <c>builder.WebHost.UseArenaMemory()</c>, which also makes its heap and pool.
/// </summary>
/// <remarks>Each connection has two pipes over <paramref name="pool"/> (a long-term pool, so the buffers the OS holds
/// while a receive waits never pin the movable zone): the receive loop writes what the socket reads into the input
/// pipe (4 KiB receives, growing to 64 KiB while they fill), the send loop writes what Kestrel flushes into the output
/// pipe to the socket. Endpoints: TCP (IPv4, IPv6; <c>IPv6Any</c> binds a dual-mode socket) and Unix domain
/// sockets.</remarks>
public sealed class ArenaSocketTransportFactory(MemoryPool<byte> pool) : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    /// <summary>True for the endpoints this transport binds: <see cref="IPEndPoint"/> and
    /// <see cref="UnixDomainSocketEndPoint"/> (Kestrel asks before it binds, and gives other endpoints to other
    /// transports).</summary>
    public bool CanBind(EndPoint endpoint) => endpoint is IPEndPoint or UnixDomainSocketEndPoint;

    /// <summary>Binds a listening socket to <paramref name="endpoint"/> (port 0 picks a free port; the listener's
    /// <see cref="IConnectionListener.EndPoint"/> says which).</summary>
    /// <exception cref="NotSupportedException">The endpoint is neither an <see cref="IPEndPoint"/> nor a
    /// <see cref="UnixDomainSocketEndPoint"/>.</exception>
    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        Socket socket = endpoint switch
        {
            IPEndPoint ip => new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp),
            UnixDomainSocketEndPoint => new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
            _ => throw new NotSupportedException($"{endpoint} ({endpoint.GetType().Name}) is not supported; this transport binds IP (TCP) and Unix domain socket endpoints."),
        };
        try
        {
            // ListenAnyIP binds IPv6Any: one dual-mode socket then takes IPv4 clients too, as Kestrel's transport does.
            if (endpoint is IPEndPoint { Address: var address } && address.Equals(IPAddress.IPv6Any)) socket.DualMode = true;
            socket.Bind(endpoint);
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        return ValueTask.FromResult<IConnectionListener>(new ArenaSocketListener(socket, pool));
    }
}

/// <summary>The listening socket of an <see cref="ArenaSocketTransportFactory"/>.</summary>
internal sealed class ArenaSocketListener(Socket socket, MemoryPool<byte> pool) : IConnectionListener
{
    public EndPoint EndPoint { get; } = socket.LocalEndPoint!;

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (true)
        {
            try
            {
                Socket accepted = await socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    if (accepted.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6) accepted.NoDelay = true;
                    return new ArenaSocketConnection(accepted, pool);
                }
                catch
                {
                    accepted.Dispose();
                    throw;
                }
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.OperationAborted)
            {
                return null;   // unbound
            }
            catch (Exception e) when (e is ObjectDisposedException or OperationCanceledException)
            {
                return null;
            }
            catch (SocketException)
            {
                // reset while in the backlog, EMFILE, ...: the listener is fine, accept the next one
            }
        }
    }

    public ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        socket.Dispose();
        return ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync()
    {
        socket.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>One accepted connection: the duplex pipe Kestrel reads and writes, and the two loops between it and the
/// socket.</summary>
internal sealed class ArenaSocketConnection : ConnectionContext
{
    private static long s_next;

    private readonly Socket _socket;
    private readonly Pipe _input, _output;
    private readonly CancellationTokenSource _closed = new();
    private readonly Task _receiving, _sending;
    private readonly Lock _shutdownLock = new();   // closes the socket once (Shutdown)
    private bool _socketClosed;                    // under _shutdownLock
    private volatile Exception? _shutdownReason;   // why it was closed: what the input pipe completes with
    private readonly TaskCompletionSource _closedFired = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly bool _gather = LinuxSockets.IsSupported;       // gathered sends through sendmsg
    private readonly MemoryHandle[] _pins = new MemoryHandle[LinuxSockets.MaxSegments];   // the send loop's, one call at a time

    public ArenaSocketConnection(Socket socket, MemoryPool<byte> pool)
    {
        _socket = socket;
        _input = new Pipe(new PipeOptions(pool: pool, minimumSegmentSize: 4096, useSynchronizationContext: false));
        // The send loop's read completes inline in the flush of the server's writer: an answer goes to the socket on
        // the thread that flushed it, without a hop through the thread pool per answer (a send the socket cannot take
        // at once continues on the socket's completion, as before).
        _output = new Pipe(new PipeOptions(pool: pool, readerScheduler: PipeScheduler.Inline, minimumSegmentSize: 4096, useSynchronizationContext: false));
        Transport = new DuplexPipe(_input.Reader, _output.Writer);
        ConnectionId = "arena-" + Interlocked.Increment(ref s_next).ToString(System.Globalization.CultureInfo.InvariantCulture);
        LocalEndPoint = socket.LocalEndPoint;
        RemoteEndPoint = socket.RemoteEndPoint;
        ConnectionClosed = _closed.Token;
        _receiving = ReceiveLoop();
        _sending = SendLoop();
    }

    public override IDuplexPipe Transport { get; set; }
    public override string ConnectionId { get; set; }
    public override IFeatureCollection Features { get; } = new FeatureCollection();
    public override IDictionary<object, object?> Items { get; set; } = new ConnectionItems();

    /// <summary>The smallest receive buffer the receive loop asks for.</summary>
    internal const int MinimumReceiveSize = 4096;

    /// <summary>The largest receive buffer: a receive that filled its buffer doubles the next one up to this size
    /// (more is waiting), one that did not goes back to <see cref="MinimumReceiveSize"/>.</summary>
    internal const int MaximumReceiveSize = 64 * 1024;

    private async Task ReceiveLoop()
    {
        Exception? error = null;
        try
        {
            int size = MinimumReceiveSize;
            while (true)
            {
                Memory<byte> buffer = _input.Writer.GetMemory(size);
                int n = await _socket.ReceiveAsync(buffer, SocketFlags.None).ConfigureAwait(false);
                if (n == 0) break;   // the peer closed its side
                _input.Writer.Advance(n);
                size = n == buffer.Length ? Math.Min(MaximumReceiveSize, Math.Max(size, n) * 2) : MinimumReceiveSize;
                FlushResult flushed = await _input.Writer.FlushAsync().ConfigureAwait(false);
                if (flushed.IsCompleted || flushed.IsCanceled) break;
            }
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown)
        {
            error = new ConnectionResetException(e.Message, e);
        }
        catch (Exception e)
        {
            error = e;   // an abort (ObjectDisposedException, OperationAborted), or the pool's OutOfMemoryException
        }
        finally
        {
            await _input.Writer.CompleteAsync(_shutdownReason ?? error).ConfigureAwait(false);
            // Off this thread, as Kestrel does: callbacks run inline in Cancel, and one may call Abort or throw.
            ThreadPool.UnsafeQueueUserWorkItem(static c =>
            {
                try { c._closed.Cancel(); } catch { }   // a callback that throws must not take the loop down: it is closing anyway
                c._closedFired.TrySetResult();
            }, this, preferLocal: false);
            await _closedFired.Task.ConfigureAwait(false);
        }
    }

    private async Task SendLoop()
    {
        Exception? reason = null;
        try
        {
            while (true)
            {
                ReadResult result = await _output.Reader.ReadAsync().ConfigureAwait(false);
                if (result.IsCanceled) break;   // Abort
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (!buffer.IsEmpty) await SendAsync(buffer).ConfigureAwait(false);
                _output.Reader.AdvanceTo(buffer.End);
                if (result.IsCompleted) break;
            }
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown)
        {
            reason = new ConnectionResetException(e.Message, e);
        }
        catch (Exception e)
        {
            reason = e;   // an abort, or the writer completed with an error (ReadAsync rethrows it)
        }
        finally
        {
            Shutdown(reason);                                        // everything sent: FIN, then close; wakes the receive
            await _output.Reader.CompleteAsync().ConfigureAwait(false);
            _input.Writer.CancelPendingFlush();                      // a receive loop paused on a full input pipe ends
        }
    }

    /// <summary>
    /// Sends all of <paramref name="buffer"/>. On Linux a multi-segment buffer goes out in one non-blocking
    /// <c>sendmsg</c> over an iovec of its segments (up to <see cref="LinuxSockets.MaxSegments"/> per call; a
    /// partial write sends the rest in the next call). When the socket's send buffer is full (EAGAIN), the first
    /// remaining segment goes through <see cref="Socket.SendAsync(ReadOnlyMemory{byte}, SocketFlags, CancellationToken)"/>,
    /// which waits for writability without a thread (the runtime's epoll), and gathering resumes after it. A single
    /// segment, and every segment on other systems, goes through that same <c>SendAsync</c>.
    /// </summary>
    private async ValueTask SendAsync(ReadOnlySequence<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            long sent = 0;
            if (_gather && !buffer.IsSingleSegment)
            {
                sent = TrySendGathered(buffer);
                if (sent > 0) Interlocked.Increment(ref _gatheredSends);
            }
            if (sent == 0)
            {
                ReadOnlyMemory<byte> first = default;
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    first = segment;
                    if (!first.IsEmpty) break;   // empty segments count no bytes: slicing by what is sent skips them
                }
                sent = await _socket.SendAsync(first, SocketFlags.None).ConfigureAwait(false);
                Interlocked.Increment(ref _segmentSends);
            }
            buffer = buffer.Slice(sent);
        }
    }

    /// <summary>One non-blocking gathered send of up to <see cref="LinuxSockets.MaxSegments"/> segments of
    /// <paramref name="buffer"/>: the bytes sent, or 0 when the socket's buffer is full. Each segment is pinned
    /// (<see cref="Memory{T}.Pin"/>: for an arena buffer, already pinned for its rent, this only counts a handle)
    /// for the call, and the socket's handle is held (<see cref="SafeHandle.DangerousAddRef"/>) so that an abort
    /// closing it meanwhile cannot let the descriptor be reused under the call.</summary>
    private unsafe long TrySendGathered(in ReadOnlySequence<byte> buffer)
    {
        LinuxSockets.IoVector* vectors = stackalloc LinuxSockets.IoVector[LinuxSockets.MaxSegments];
        MemoryHandle[] handles = _pins;
        int count = 0;
        try
        {
            foreach (ReadOnlyMemory<byte> segment in buffer)
            {
                if (segment.IsEmpty) continue;
                handles[count] = segment.Pin();
                vectors[count].Base = handles[count].Pointer;
                vectors[count].Length = (nuint)segment.Length;
                if (++count == LinuxSockets.MaxSegments) break;
            }
            SafeSocketHandle handle = _socket.SafeHandle;
            bool added = false;
            try
            {
                handle.DangerousAddRef(ref added);
                return LinuxSockets.Send((int)handle.DangerousGetHandle(), vectors, count);
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
        }
        finally
        {
            for (int i = 0; i < count; i++)
            {
                handles[i].Dispose();
                handles[i] = default;
            }
        }
    }

    /// <summary>Gathered send calls that sent something (for tests: a multi-segment answer takes one). Counted after
    /// the call, so a peer can have the bytes before the count shows them: read it after the send loop moved on.</summary>
    internal int GatheredSends => Volatile.Read(ref _gatheredSends);

    /// <summary>Sends of one segment (a single-segment buffer, or the first remaining segment after a full socket
    /// buffer): with <see cref="GatheredSends"/>, the send calls an answer took (for tests).</summary>
    internal int SegmentSends => Volatile.Read(ref _segmentSends);

    private int _gatheredSends, _segmentSends;

    /// <summary>Closes the socket once: a graceful shutdown first (a pending receive then ends with 0 bytes; a bare
    /// Dispose with an operation pending is an abortive close, a RST that discards the unsent and unread answer).</summary>
    private void Shutdown(Exception? reason)
    {
        lock (_shutdownLock)
        {
            if (_socketClosed) return;
            _socketClosed = true;
            _shutdownReason = reason ?? new ConnectionAbortedException("The transport's send loop completed.");
            try { _socket.Shutdown(SocketShutdown.Both); } catch { }   // the peer may have gone already: closing is all that is left
            _socket.Dispose();
        }
    }

    public override void Abort(ConnectionAbortedException abortReason)
    {
        Shutdown(abortReason);
        _output.Reader.CancelPendingRead();
    }

    public override async ValueTask DisposeAsync()
    {
        // The server's sides first, as Kestrel's transport does: the send loop sends what is left and closes the
        // socket, a receive loop paused in FlushAsync sees the reader complete. Then the pipes are all complete.
        await _input.Reader.CompleteAsync().ConfigureAwait(false);
        await _output.Writer.CompleteAsync().ConfigureAwait(false);
        await Task.WhenAll(_receiving, _sending).ConfigureAwait(false);   // the loops catch everything
        _closed.Dispose();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;
        public PipeWriter Output { get; } = output;
    }
}
