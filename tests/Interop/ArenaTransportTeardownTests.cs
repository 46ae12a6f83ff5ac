using System.Net;
using System.Net.Sockets;
using System.Text;
using Compaction.Allocator;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Compaction.Tests;

/// <summary>How the arena socket transport ends a connection: the whole answer reaches the peer, a failing server
/// side or unread input neither leaks a long-term pinned buffer nor hangs Dispose (each test failed before its fix).</summary>
public sealed class ArenaTransportTeardownTests
{
    /// <summary>The server completes its output with an error: the send loop sees it rethrown, and Dispose still
    /// completes every pipe end, so every buffer goes back to the pool.</summary>
    [Fact]
    public async Task OutputCompletedWithAnErrorStillGivesEveryBufferBack()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        {
            var connection = new ArenaSocketConnection(server, pool);
            await Task.Delay(100);   // the receive loop has rented its buffer and waits
            connection.Transport.Output.Complete(new InvalidOperationException("the application failed"));
            await connection.DisposeAsync();
        }
        Assert.Equal(0, pool.RentedBuffers);
    }

    /// <summary>The peer sends more than the input pipe holds before it pauses (64 KiB) and nothing reads it: the
    /// receive loop waits in FlushAsync, and Dispose must still end it.</summary>
    [Fact]
    public async Task UnreadInputDoesNotHangDispose()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        {
            var connection = new ArenaSocketConnection(server, pool);
            await client.SendAsync(new byte[1 << 20]);
            await Task.Delay(200);
            Task dispose = connection.DisposeAsync().AsTask();
            Assert.True(await Task.WhenAny(dispose, Task.Delay(3000)) == dispose, "DisposeAsync did not end within 3 s");
        }
        Assert.Equal(0, pool.RentedBuffers);
    }

    /// <summary>
    /// 50 requests of 60,000 bytes each, with and without "Connection: close", through the arena transport and (for
    /// comparison) Kestrel's own: every answer arrives whole. With "Connection: close" Kestrel completes the output and
    /// disposes the connection right after its last flush; a socket disposed with a send still pending is closed
    /// abortively (a RST that drops the unsent answer), so the transport shuts the socket down only once everything
    /// is sent.
    /// </summary>
    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public async Task EveryAnswerArrivesWholeWhenTheConnectionCloses(bool arenaTransport, bool connectionClose)
    {
        using NativeHeap heap = TestHeaps.Small();
        using var pool = new ArenaMemoryPool(heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        if (arenaTransport) builder.Services.AddSingleton<IConnectionListenerFactory>(new ArenaSocketTransportFactory(pool));
        await using WebApplication app = builder.Build();
        app.MapGet("/b/{n:int}", (int n) => Results.Bytes(new byte[n]));
        await app.StartAsync();
        int port = new Uri(app.Urls.First()).Port;
        const int n = 60_000;
        int incomplete = 0;
        string? first = null;
        for (int i = 0; i < 50; i++)
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await s.ConnectAsync(IPAddress.Loopback, port);
            await s.SendAsync(Encoding.ASCII.GetBytes($"GET /b/{n} HTTP/1.1\r\nHost: x\r\n" + (connectionClose ? "Connection: close\r\n" : "") + "\r\n"));
            var received = new MemoryStream();
            var buffer = new byte[65536];
            try
            {
                int r;
                while ((r = await s.ReceiveAsync(buffer)) > 0)
                {
                    received.Write(buffer, 0, r);
                    if (!connectionClose && received.Length >= n + 60)
                    {
                        await Task.Delay(50);   // keep-alive: the headers' length varies; take what is left and stop
                        while (s.Available > 0) received.Write(buffer, 0, s.Receive(buffer));
                        break;
                    }
                }
            }
            catch (SocketException e)
            {
                first ??= e.SocketErrorCode.ToString();
            }
            string text = Encoding.ASCII.GetString(received.ToArray());
            int headerEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (headerEnd < 0 || received.Length - headerEnd - 4 != n)
            {
                incomplete++;
                first ??= $"{received.Length} bytes: {text[..Math.Min(120, text.Length)]}";
            }
        }
        await app.StopAsync();
        Assert.True(incomplete == 0, $"{incomplete} of 50 answers incomplete; first: {first}");
    }
}
