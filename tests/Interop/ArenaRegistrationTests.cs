using System.Net;
using Compaction.Allocator;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Compaction.Tests;

/// <summary>How a server takes arena memory: <c>UseArenaMemory</c> (heap, pool and transport together, answers of
/// every size, the heap disposed with the host), and the misuse it replaces (the arena pool factory under Kestrel's
/// own socket transport) stopping the host at start-up with a message naming the fix.</summary>
public sealed class ArenaRegistrationTests
{
    private static byte At(long offset) => (byte)(offset * 131 + (offset >> 11));

    private static WebApplication Build(Action<WebApplicationBuilder> configure)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(k => k.Listen(IPAddress.Loopback, 0));
        configure(builder);
        WebApplication app = builder.Build();
        app.MapGet("/bytes/{n:int}", (int n) =>
        {
            var body = new byte[n];
            for (int i = 0; i < n; i++) body[i] = At(i);
            return Results.Bytes(body);
        });
        app.MapPost("/echo", async (HttpContext ctx) =>
        {
            ctx.Response.ContentLength = ctx.Request.ContentLength;
            await ctx.Request.BodyReader.CopyToAsync(ctx.Response.BodyWriter);
        });
        return app;
    }

    /// <summary>The misuse: Kestrel's socket transport with the arena pool factory. The host does not start, and says
    /// what to do instead; no server that resets answers ever listens.</summary>
    [Fact]
    public async Task ThePoolFactoryUnderKestrelsSocketTransportStopsTheHostAtStartUp()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var factory = new ArenaMemoryPoolFactory(heap);
        await using WebApplication app = Build(b => b.Services.AddSingleton<IMemoryPoolFactory<byte>>(factory));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => app.StartAsync());
        Assert.Contains("UseArenaMemory", e.Message);
        Assert.Contains("Buffer backed by array was expected", e.Message);
    }

    /// <summary>The factory still makes pools for any other caller.</summary>
    [Fact]
    public void ThePoolFactoryServesOtherCallers()
    {
        using NativeHeap heap = TestHeaps.Small();
        using var factory = new ArenaMemoryPoolFactory(heap);
        using var pool = factory.Create(new MemoryPoolOptions { Owner = "test" });
        using var buffer = pool.Rent(100_000);
        Assert.True(buffer.Memory.Length >= 100_000);
    }

    /// <summary>UseArenaMemory: GET and echo POST bodies of 1 B to 1 MiB, every byte checked, all through the arena
    /// transport's pool; the heap runs its background thread and is disposed with the host.</summary>
    [Fact]
    public async Task UseArenaMemoryServesAnswersOfEverySizeAndDisposesTheHeapWithTheHost()
    {
        WebApplication app = Build(b => b.WebHost.UseArenaMemory());
        await app.StartAsync();
        ArenaServerMemory arena = app.Services.GetRequiredService<ArenaServerMemory>();
        Assert.True(arena.Heap.BackgroundCompactionRunning);
        Assert.IsType<ArenaSocketTransportFactory>(app.Services.GetServices<IConnectionListenerFactory>().Last());
        long wrong = 0;
        using (var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()) })
        {
            foreach (int n in new[] { 1, 100, 4096, 4097, 65_536, 300_001, 1 << 20 })
            {
                byte[] body = await http.GetByteArrayAsync($"/bytes/{n}");
                Assert.Equal(n, body.Length);
                for (int i = 0; i < n; i++) if (body[i] != At(i)) wrong++;
                using HttpResponseMessage echo = await http.PostAsync("/echo", new ByteArrayContent(body));
                byte[] back = await echo.Content.ReadAsByteArrayAsync();
                Assert.Equal(n, back.Length);
                for (int i = 0; i < n; i++) if (back[i] != At(i)) wrong++;
            }
        }
        Assert.Equal(0, wrong);
        Assert.True(arena.Pool.Rents > 0, "the connections' buffers came from the arena pool");
        await app.StopAsync();
        await app.DisposeAsync();
        Assert.Equal(0, arena.Pool.RentedBuffers);
        Assert.True(arena.Heap.IsDisposed, "the heap is disposed with the host");
    }

    /// <summary>BackgroundCompaction = false leaves the heap's thread off.</summary>
    [Fact]
    public async Task UseArenaMemoryWithoutBackgroundCompaction()
    {
        await using WebApplication app = Build(b => b.WebHost.UseArenaMemory(o => o.BackgroundCompaction = false));
        await app.StartAsync();
        Assert.False(app.Services.GetRequiredService<ArenaServerMemory>().Heap.BackgroundCompactionRunning);
        using var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()) };
        Assert.Equal(70_000, (await http.GetByteArrayAsync("/bytes/70000")).Length);
        await app.StopAsync();
    }
}
