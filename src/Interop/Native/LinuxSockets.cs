using System.Runtime.InteropServices;

namespace Compaction.Interop.Native;

/// <summary>
/// The Interop library's only P/Invoke: <c>sendmsg(2)</c> on Linux, for a gathered send from pinned native memory
/// (an iovec over a pipe's segments, one system call for a whole multi-segment answer). .NET's own gathered send
/// (<c>Socket.SendAsync(IList&lt;ArraySegment&lt;byte&gt;&gt;)</c>, <c>SocketAsyncEventArgs.BufferList</c>) takes
/// arrays only, which native memory is not.
/// </summary>
/// <remarks>Linux only (64-bit and 32-bit: the structures use <see cref="nuint"/> for <c>size_t</c>);
/// <see cref="IsSupported"/> is false elsewhere and callers send segment by segment. The send never blocks
/// (<c>MSG_DONTWAIT</c>, whatever the descriptor's mode) and never raises SIGPIPE (<c>MSG_NOSIGNAL</c>).</remarks>
internal static unsafe partial class LinuxSockets
{
    /// <summary>How many segments one call gathers at most (Linux's UIO_MAXIOV is 1024; 64 segments of 4 KiB or
    /// more cover a 256 KiB socket buffer, and the caller loops for the rest).</summary>
    public const int MaxSegments = 64;

    private const int MSG_DONTWAIT = 0x40;
    private const int MSG_NOSIGNAL = 0x4000;
    private const int EINTR = 4;
    private const int EAGAIN = 11;   // EWOULDBLOCK on Linux

    /// <summary>True on Linux, where <see cref="Send"/> may be called.</summary>
    public static bool IsSupported { get; } = OperatingSystem.IsLinux();

    /// <summary>One element of an iovec (<c>struct iovec</c>).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVector
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MessageHeader   // struct msghdr
    {
        public void* Name;
        public uint NameLength;
        public IoVector* Vectors;
        public nuint VectorCount;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMessage(int fd, MessageHeader* message, int flags);

    /// <summary>
    /// Sends the <paramref name="count"/> vectors at <paramref name="vectors"/> on socket <paramref name="fd"/> in
    /// one non-blocking call. Returns the bytes the kernel took (possibly fewer than asked: a partial write), or 0
    /// when the socket's send buffer is full (EAGAIN: nothing was sent; wait for writability).
    /// </summary>
    /// <exception cref="System.Net.Sockets.SocketException">Any other error (reset, broken pipe, ...), with its
    /// <see cref="System.Net.Sockets.SocketError"/>.</exception>
    public static long Send(int fd, IoVector* vectors, int count)
    {
        var header = new MessageHeader { Vectors = vectors, VectorCount = (nuint)count };
        while (true)
        {
            nint n = SendMessage(fd, &header, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n >= 0) return n;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            throw new System.Net.Sockets.SocketException(ToSocketError(errno));
        }
    }

    /// <summary>The <see cref="System.Net.Sockets.SocketError"/> of a Linux errno (the ones a send can give).</summary>
    internal static int ToSocketError(int errno) => errno switch
    {
        32 => (int)System.Net.Sockets.SocketError.Shutdown,            // EPIPE: our side was shut down, or the peer's reset
        104 => (int)System.Net.Sockets.SocketError.ConnectionReset,    // ECONNRESET
        9 => (int)System.Net.Sockets.SocketError.OperationAborted,     // EBADF: closed under us
        107 => (int)System.Net.Sockets.SocketError.NotConnected,       // ENOTCONN
        110 => (int)System.Net.Sockets.SocketError.TimedOut,           // ETIMEDOUT
        113 => (int)System.Net.Sockets.SocketError.HostUnreachable,    // EHOSTUNREACH
        101 => (int)System.Net.Sockets.SocketError.NetworkUnreachable, // ENETUNREACH
        105 => (int)System.Net.Sockets.SocketError.NoBufferSpaceAvailable, // ENOBUFS
        12 => (int)System.Net.Sockets.SocketError.NoBufferSpaceAvailable,  // ENOMEM
        _ => (int)System.Net.Sockets.SocketError.SocketError,
    };
}
