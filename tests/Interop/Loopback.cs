using System.Net;
using System.Net.Sockets;

namespace Compaction.Tests;

/// <summary>Real sockets over loopback for the I/O tests.</summary>
internal static class Loopback
{
    /// <summary>A connected TCP pair: the client side and the side the listener accepted.</summary>
    public static async Task<(Socket client, Socket server)> Pair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task<Socket> accept = listener.AcceptAsync();
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await accept);
    }
}
