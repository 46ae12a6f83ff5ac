using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Compaction.Allocator;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Compaction.Tests;

/// <summary>
/// Real I/O through arena buffers, each while the background compactor runs at full aggressiveness and a churn
/// thread fragments and compacts the same heap (<see cref="ArenaPoolStress"/>): a file through RandomAccess, a
/// loopback TCP socket, a Pipe over a socket, and a Kestrel server over the arena transport. Every byte
/// is checked against a pattern of its offset in the stream.
/// </summary>
public sealed class ArenaPoolIoTests
{
    private static byte At(long offset) => (byte)(offset * 131 + (offset >> 11));

    private static void FillPattern(Span<byte> span, long offset)
    {
        for (int i = 0; i < span.Length; i++) span[i] = At(offset + i);
    }

    private static int CountWrong(ReadOnlySpan<byte> span, long offset)
    {
        int bad = 0;
        for (int i = 0; i < span.Length; i++) if (span[i] != At(offset + i)) bad++;
        return bad;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AFileIsWrittenAndReadThroughArenaBuffers(bool longTerm)
    {
        using var stress = new ArenaPoolStress();
        using var pool = new ArenaMemoryPool(stress.Heap, new ArenaMemoryPoolOptions { LongTermPins = longTerm });
        string path = Path.Combine(Path.GetTempPath(), $"arena-pool-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        try
        {
            int[] sizes = [1, 17, 4096, 65_536, 300_000, 1 << 20];
            long offset = 0, wrong = 0;
            using (var file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous))
            {
                foreach (int size in sizes)
                {
                    using IMemoryOwner<byte> b = pool.Rent(size);
                    FillPattern(b.Memory.Span, offset);
                    await RandomAccess.WriteAsync(file, b.Memory, offset);
                    offset += size;
                }
                long read = 0;
                foreach (int size in sizes.Reverse())
                {
                    using IMemoryOwner<byte> b = pool.Rent(size);
                    long at = offset - read - size;
                    int n = await RandomAccess.ReadAsync(file, b.Memory, at);
                    Assert.Equal(size, n);
                    wrong += CountWrong(b.Memory.Span, at);
                    read += size;
                }
            }
            Assert.Equal(0, wrong);
            Assert.Equal(0, pool.RentedBuffers);
        }
        finally
        {
            File.Delete(path);
        }
        Assert.Equal(0, stress.CorruptBytes);
    }

    [Fact]
    public async Task ALoopbackSocketSendsAndReceivesThroughArenaBuffers()
    {
        using var stress = new ArenaPoolStress();
        using var pool = new ArenaMemoryPool(stress.Heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        using (server)
        {
            const long total = 8L << 20;
            var rng = new Random(5);
            Task send = Task.Run(async () =>
            {
                for (long sent = 0; sent < total;)
                {
                    int n = (int)Math.Min(total - sent, rng.Next(1, 200_000));
                    using IMemoryOwner<byte> b = pool.Rent(n);
                    FillPattern(b.Memory.Span, sent);
                    for (int done = 0; done < n;) done += await client.SendAsync(b.Memory[done..], SocketFlags.None);
                    sent += n;
                }
                client.Shutdown(SocketShutdown.Send);
            });
            long received = 0, wrong = 0;
            while (true)
            {
                using IMemoryOwner<byte> b = pool.Rent(64 * 1024);
                int n = await server.ReceiveAsync(b.Memory, SocketFlags.None);
                if (n == 0) break;
                wrong += CountWrong(b.Memory.Span[..n], received);
                received += n;
            }
            await send;
            Assert.Equal(total, received);
            Assert.Equal(0, wrong);
        }
        Assert.Equal(0, pool.RentedBuffers);
        Assert.Equal(0, stress.CorruptBytes);
    }

    [Fact]
    public async Task APipeOverALoopbackSocketUsesTheArenaPool()
    {
        using var stress = new ArenaPoolStress();
        using var pool = new ArenaMemoryPool(stress.Heap);
        (Socket client, Socket server) = await Loopback.Pair();
        using (client)
        using (server)
        {
            const long total = 6L << 20;
            var pipe = new Pipe(new PipeOptions(pool: pool, minimumSegmentSize: 4096, useSynchronizationContext: false));
            Task send = Task.Run(async () =>
            {
                var data = new byte[1 << 20];
                for (long sent = 0; sent < total; sent += data.Length)
                {
                    FillPattern(data, sent);
                    await client.SendAsync(data, SocketFlags.None);
                }
                client.Shutdown(SocketShutdown.Send);
            });
            Task fill = Task.Run(async () =>
            {
                while (true)
                {
                    Memory<byte> m = pipe.Writer.GetMemory(4096);
                    int n = await server.ReceiveAsync(m, SocketFlags.None);
                    if (n == 0) break;
                    pipe.Writer.Advance(n);
                    await pipe.Writer.FlushAsync();
                }
                await pipe.Writer.CompleteAsync();
            });
            long read = 0, wrong = 0;
            while (true)
            {
                ReadResult r = await pipe.Reader.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in r.Buffer)
                {
                    wrong += CountWrong(segment.Span, read);
                    read += segment.Length;
                }
                pipe.Reader.AdvanceTo(r.Buffer.End);
                if (r.IsCompleted) break;
            }
            await pipe.Reader.CompleteAsync();
            await Task.WhenAll(send, fill);
            Assert.Equal(total, read);
            Assert.Equal(0, wrong);
            Assert.True(pool.Rents > 0, "the pipe rented its segments from the arena pool");
        }
        Assert.Equal(0, pool.RentedBuffers);
        Assert.Equal(0, stress.CorruptBytes);
    }

    /// <summary>A Kestrel server over loopback whose transport takes its pool from <paramref name="factory"/>:
    /// GET /bytes/{n} answers n pattern bytes, POST /echo sends the body back.</summary>
    private static async Task<WebApplication> StartKestrel(IMemoryPoolFactory<byte> factory, IConnectionListenerFactory? transport = null)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        // After UseKestrel, which registers the server's own factory and transport: the last registration is the one
        // resolved.
        builder.Services.AddSingleton(factory);
        if (transport != null) builder.Services.AddSingleton(transport);
        WebApplication app = builder.Build();
        app.MapGet("/bytes/{n:int}", async (int n, HttpContext ctx) =>
        {
            var chunk = new byte[64 * 1024];
            for (long done = 0; done < n;)
            {
                int len = (int)Math.Min(chunk.Length, n - done);
                FillPattern(chunk.AsSpan(0, len), done);
                await ctx.Response.Body.WriteAsync(chunk.AsMemory(0, len));
                done += len;
            }
        });
        app.MapPost("/echo", async (HttpContext ctx) =>
        {
            var chunk = new byte[64 * 1024];
            int n;
            while ((n = await ctx.Request.Body.ReadAsync(chunk)) > 0) await ctx.Response.Body.WriteAsync(chunk.AsMemory(0, n));
        });
        await app.StartAsync();
        return app;
    }

    /// <summary>For each size: GET /bytes/{n} and POST /echo of n pattern bytes; returns the wrong bytes seen.</summary>
    private static async Task<long> ExchangeBodies(HttpClient http, int[] sizes)
    {
        long wrong = 0;
        foreach (int n in sizes)
        {
            byte[] body = await http.GetByteArrayAsync($"/bytes/{n}");
            Assert.Equal(n, body.Length);
            wrong += CountWrong(body, 0);
            var upload = new byte[n];
            FillPattern(upload, 0);
            using HttpResponseMessage echo = await http.PostAsync("/echo", new ByteArrayContent(upload));
            byte[] back = await echo.Content.ReadAsByteArrayAsync();
            Assert.Equal(n, back.Length);
            wrong += CountWrong(back, 0);
        }
        return wrong;
    }

    /// <summary>
    /// Kestrel over the arena's own socket transport (<see cref="ArenaSocketTransportFactory"/>), every connection
    /// buffer arena memory under a long-term pin: GET and echo POST bodies from 1 B to 5 MiB, every byte checked,
    /// with the compactor at full aggressiveness on the same heap.
    /// </summary>
    [Fact]
    public async Task KestrelOverTheArenaTransportAnswersBodiesFromOneByteToMegabytes()
    {
        using var stress = new ArenaPoolStress();
        using var arenaFactory = new ArenaMemoryPoolFactory(stress.Heap);   // Kestrel's own uses of a pool, if any
        using var transportPool = new ArenaMemoryPool(stress.Heap, new ArenaMemoryPoolOptions { LongTermPins = true });
        await using WebApplication app = await StartKestrel(arenaFactory, new ArenaSocketTransportFactory(transportPool));
        using var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()) };
        long wrong = await ExchangeBodies(http, [1, 100, 4096, 65_537, 1 << 20, 5 << 20]);
        await app.StopAsync();
        await app.DisposeAsync();
        Assert.Equal(0, transportPool.RentedBuffers);   // every connection gave its buffers back
        Assert.Equal(0, wrong);
        Assert.True(transportPool.Rents > 100, $"{transportPool.Rents} rents: the connections' pipes took their buffers from the arena");
        Assert.Equal(0, stress.Heap.GetStatistics().LongTermPinFailures);
        Assert.Equal(0, stress.CorruptBytes);
    }
}
