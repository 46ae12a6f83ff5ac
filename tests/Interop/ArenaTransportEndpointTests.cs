using System.Net;
using System.Net.Sockets;
using Compaction.Interop;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Compaction.Tests;

/// <summary>The endpoints the arena transport binds besides IPv4: a Unix domain socket and a dual-mode IPv6 socket
/// (what <c>ListenAnyIP</c> binds), each through Kestrel with <c>UseArenaMemory</c>.</summary>
public sealed class ArenaTransportEndpointTests
{
    private static async Task<WebApplication> Start(Action<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions> listen)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(listen);
        builder.WebHost.UseArenaMemory();
        WebApplication app = builder.Build();
        app.MapGet("/bytes/{n:int}", (int n) => Results.Bytes(new byte[n]));
        await app.StartAsync();
        return app;
    }

    [Fact]
    public async Task AUnixDomainSocketServesWholeAnswers()
    {
        string path = Path.Combine(Path.GetTempPath(), $"arena-{Environment.ProcessId}-{Guid.NewGuid():N}.sock");
        await using (WebApplication app = await Start(k => k.ListenUnixSocket(path)))
        {
            var handler = new SocketsHttpHandler
            {
                ConnectCallback = async (_, ct) =>
                {
                    var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                    return new NetworkStream(s, ownsSocket: true);
                },
            };
            using var http = new HttpClient(handler) { BaseAddress = new Uri("http://localhost") };
            foreach (int n in new[] { 1, 65_536, 1 << 20 })
                Assert.Equal(n, (await http.GetByteArrayAsync($"/bytes/{n}")).Length);
            await app.StopAsync();
        }
        Assert.False(File.Exists(path), "the socket file is removed when the listener closes");
    }

    [Fact]
    public async Task ADualModeIPv6ListenerTakesIPv4AndIPv6Clients()
    {
        if (!Socket.OSSupportsIPv6) return;   // nothing to test without IPv6
        int port;
        using (var probe = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true })
        {
            probe.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }
        await using WebApplication app = await Start(k => k.ListenAnyIP(port));
        foreach (string host in new[] { "127.0.0.1", "[::1]" })
        {
            using var http = new HttpClient { BaseAddress = new Uri($"http://{host}:{port}") };
            Assert.Equal(65_536, (await http.GetByteArrayAsync("/bytes/65536")).Length);
        }
        await app.StopAsync();
    }

    [Fact]
    public async Task TheFactoryRefusesEndpointsItCannotBind()
    {
        var factory = new ArenaSocketTransportFactory(System.Buffers.MemoryPool<byte>.Shared);
        Assert.False(factory.CanBind(new Microsoft.AspNetCore.Connections.FileHandleEndPoint(0, Microsoft.AspNetCore.Connections.FileHandleType.Auto)));
        Assert.True(factory.CanBind(new UnixDomainSocketEndPoint("/tmp/x.sock")));
        Assert.True(factory.CanBind(new IPEndPoint(IPAddress.IPv6Any, 0)));
        await Assert.ThrowsAsync<NotSupportedException>(async () => await factory.BindAsync(new DnsEndPoint("localhost", 80)));
    }
}
