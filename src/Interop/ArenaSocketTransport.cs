using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;

namespace Compaction.Interop;

/// <summary>
/// A socket transport for Kestrel (an <see cref="IConnectionListenerFactory"/>) whose connection buffers are arena
/// memory. Kestrel's own socket transport gathers a multi-buffer send through SocketAsyncEventArgs.BufferList, which
/// takes arrays, and throws "Buffer backed by array was expected" for native memory; this one sends each buffer
/// with <see cref="Socket.SendAsync(ReadOnlyMemory{byte}, SocketFlags, CancellationToken)"/> and receives straight
/// into the pipe's arena buffers, so neither direction copies or needs an array.
/// Register it after <c>UseKestrel()</c>:
/// <c>services.AddSingleton&lt;IConnectionListenerFactory&gt;(new ArenaSocketTransportFactory(pool))</c>.
/// </summary>
/// <remarks>Each connection has two pipes over <paramref name="pool"/> (a long-term pool, so the buffers the OS holds
/// while a receive waits never pin the movable zone): the receive loop writes what the socket reads into the input
/// pipe, the send loop writes what Kestrel flushes into the output pipe to the socket, segment by segment. TCP
/// endpoints only (IPv4 and IPv6).</remarks>
public sealed class ArenaSocketTransportFactory(MemoryPool<byte> pool) : IConnectionListenerFactory
{
    /// <summary>Binds a listening socket to <paramref name="endpoint"/> (port 0 picks a free port; the listener's
    /// <see cref="IConnectionListener.EndPoint"/> says which).</summary>
    /// <exception cref="NotSupportedException">The endpoint is not an <see cref="IPEndPoint"/>.</exception>
    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        if (endpoint is not IPEndPoint ip) throw new NotSupportedException($"{endpoint} is not a TCP endpoint; this transport binds IP endpoints only.");
        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(ip);
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
                    accepted.NoDelay = true;
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

    public ArenaSocketConnection(Socket socket, MemoryPool<byte> pool)
    {
        _socket = socket;
        var options = new PipeOptions(pool: pool, minimumSegmentSize: 4096, useSynchronizationContext: false);
        _input = new Pipe(options);
        _output = new Pipe(options);
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

    private async Task ReceiveLoop()
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                Memory<byte> buffer = _input.Writer.GetMemory(4096);
                int n = await _socket.ReceiveAsync(buffer, SocketFlags.None).ConfigureAwait(false);
                if (n == 0) break;   // the peer closed its side
                _input.Writer.Advance(n);
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
                foreach (ReadOnlyMemory<byte> segment in buffer)
                    for (int sent = 0; sent < segment.Length;)
                        sent += await _socket.SendAsync(segment[sent..], SocketFlags.None).ConfigureAwait(false);
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
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;
        public PipeWriter Output { get; } = output;
    }
}
