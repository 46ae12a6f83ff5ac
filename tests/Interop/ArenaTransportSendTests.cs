using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Compaction.Allocator;
using Compaction.Interop;

namespace Compaction.Tests;

/// <summary>The arena transport's send and receive paths on one connection over loopback: gathered sends of
/// multi-segment output (1 B to 1 MiB, every byte checked), half-close, abort.</summary>
public sealed class ArenaTransportSendTests
{
    private static byte At(long offset) => (byte)(offset * 131 + (offset >> 11));

    /// <summary>Writes <paramref name="n"/> pattern bytes into the output in 4 KiB segments (one GetMemory each, as
    /// Kestrel writes an answer), then flushes once: a multi-segment buffer for the send loop.</summary>
    private static async Task WriteSegmented(PipeWriter output, int n, long offset)
    {
        for (int done = 0; done < n;)
        {
            Memory<byte> m = output.GetMemory(4096);
            int len = Math.Min(4096, n - done);
            Span<byte> span = m.Span;
            for (int i = 0; i < len; i++) span[i] = At(offset + done + i);
            output.Advance(len);
            done += len;
        }
        await output.FlushAsync();
    }

    private static async Task<(long received, long wrong)> ReadAll(Socket client, long expected)
    {
        var buffer = new byte[256 * 1024];
        long received = 0, wrong = 0;
        while (received < expected)
        {
            int r = await client.ReceiveAsync(buffer, SocketFlags.None);
            if (r == 0) break;
            for (int i = 0; i < r; i++) if (buffer[i] != At(received + i)) wrong++;
            received += r;
        }
        return (received, wrong);
    }

    [Fact]
    public async Task MultiSegmentAnswersFromOneByteToOneMebibyteArriveWholeInFewSystemCalls()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        // Socket buffers that hold the 40 KB answer whole, so that the count below does not depend on how fast a loaded
        // machine schedules the reader (a full buffer sends segment by segment, by design).
        server.SendBufferSize = 1 << 20;
        client.ReceiveBufferSize = 1 << 20;
        using (client)
        {
            var connection = new ArenaSocketConnection(server, pool);
            try
            {
                int[] sizes = [1, 100, 4095, 4096, 4097, 40_000, 65_536, 300_001, 1 << 20];
                foreach (int n in sizes)
                {
                    int before = connection.GatheredSends + connection.SegmentSends;
                    Task<(long, long)> read = ReadAll(client, n);
                    await WriteSegmented(connection.Transport.Output, n, 0);
                    (long received, long wrong) = await read;
                    Assert.Equal(n, received);
                    Assert.Equal(0, wrong);
                    if (OperatingSystem.IsLinux() && n == 40_000)
                    {
                        // Ten segments: one sendmsg when the socket's buffer takes 40 KB at once, a few calls when it
                        // fills up (each EAGAIN sends one segment through SendAsync); never one call per segment.
                        // The send loop counts a call after it returns, so the peer may hold every byte a moment
                        // before the count shows the call: wait for it (bounded) before judging.
                        int calls = 0;
                        for (int wait = 0; wait < 5_000 && (calls = connection.GatheredSends + connection.SegmentSends - before) == 0; wait++)
                            Thread.Sleep(1);
                        Assert.InRange(calls, 1, 5);
                    }
                }
                if (OperatingSystem.IsLinux()) Assert.True(connection.GatheredSends > 0);
            }
            finally
            {
                await connection.DisposeAsync();   // even when an assertion failed, so the heap's Dispose does not hide it
            }
        }
        Assert.Equal(0, pool.RentedBuffers);
    }

    /// <summary>The peer sends its request and shuts its sending side down (half-close): the input completes, and
    /// the answer written afterwards still reaches the peer whole.</summary>
    [Fact]
    public async Task AHalfClosedPeerStillGetsTheWholeAnswer()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        {
            var connection = new ArenaSocketConnection(server, pool);
            await client.SendAsync(new byte[100_000], SocketFlags.None);
            client.Shutdown(SocketShutdown.Send);
            long input = 0;
            while (true)
            {
                ReadResult r = await connection.Transport.Input.ReadAsync();
                input += r.Buffer.Length;
                connection.Transport.Input.AdvanceTo(r.Buffer.End);
                if (r.IsCompleted) break;
            }
            Assert.Equal(100_000, input);
            Task<(long, long)> read = ReadAll(client, long.MaxValue);
            await WriteSegmented(connection.Transport.Output, 500_000, 0);
            await connection.Transport.Output.CompleteAsync();   // the send loop sends it all, then FIN
            (long received, long wrong) = await read;            // ends at the FIN
            Assert.Equal(500_000, received);
            Assert.Equal(0, wrong);
            await connection.Transport.Input.CompleteAsync();
            await connection.DisposeAsync();
        }
        Assert.Equal(0, pool.RentedBuffers);
    }

    /// <summary>Abort while a large answer waits for a peer that reads nothing (the send loop waits for writability):
    /// the send ends, the connection closes, Dispose completes and every buffer goes back.</summary>
    [Fact]
    public async Task AbortEndsASendWaitingOnAFullSocket()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        {
            var connection = new ArenaSocketConnection(server, pool);
            Task write = WriteSegmented(connection.Transport.Output, 8 << 20, 0);   // more than the socket buffers hold
            await Task.Delay(300);
            var closed = new TaskCompletionSource();
            connection.ConnectionClosed.Register(() => closed.TrySetResult());
            connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("test abort"));
            Assert.True(await Task.WhenAny(closed.Task, Task.Delay(5000)) == closed.Task, "ConnectionClosed did not fire within 5 s");
            try { await write; } catch (Exception) { }   // the writer may see the pipe end
            await connection.Transport.Output.CompleteAsync();
            await connection.Transport.Input.CompleteAsync();
            Task dispose = connection.DisposeAsync().AsTask();
            Assert.True(await Task.WhenAny(dispose, Task.Delay(5000)) == dispose, "DisposeAsync did not end within 5 s");
            // The client sees the end of the stream (or a reset) after what was sent.
            var sink = new byte[1 << 20];
            try { while (await client.ReceiveAsync(sink, SocketFlags.None) > 0) { } }
            catch (SocketException) { }
        }
        Assert.Equal(0, pool.RentedBuffers);
    }
}
