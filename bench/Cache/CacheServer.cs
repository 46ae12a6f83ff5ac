using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Compaction.Allocator;

namespace Compaction.Bench.Cache;

/// <summary>
/// The cache server's values: malloc'd memory, or movable blocks of a <see cref="NativeHeap"/> (pinned while copied in
/// or out). Keys live in 64 managed dictionaries, each with its lock; a SET swaps the value under the lock and frees the
/// old one after it, a GET copies the value out under the lock (so no value is freed while it is read).
/// </summary>
internal sealed unsafe class ValueStore : IDisposable
{
    private readonly struct Value(BlockHandle handle, nint pointer, int length)
    {
        public readonly BlockHandle Handle = handle;   // the heap's modes
        public readonly nint Pointer = pointer;        // malloc
        public readonly int Length = length;
    }

    private readonly NativeHeap? _heap;
    private readonly Dictionary<string, Value>[] _shards = Enumerable.Range(0, 64).Select(_ => new Dictionary<string, Value>()).ToArray();

    public ValueStore(string mode)
    {
        if (mode == "malloc") return;
        if (mode is not ("native" or "native-background")) throw new ArgumentException($"unknown mode {mode}", nameof(mode));
        _heap = new NativeHeap(new HeapOptions { ArenaBytes = 8L << 30 });
        if (mode == "native-background") _heap.StartBackgroundCompaction();
    }

    private Dictionary<string, Value> Shard(string key) => _shards[(key.GetHashCode() & int.MaxValue) % _shards.Length];

    public void Set(string key, ReadOnlySpan<byte> bytes)
    {
        Value value;
        if (_heap != null)
        {
            BlockHandle h = _heap.Allocate(Math.Max(1, bytes.Length), BlockKind.Movable);
            using (PinScope pin = _heap.Pin(h)) bytes.CopyTo(new Span<byte>(pin.Pointer, bytes.Length));
            value = new Value(h, 0, bytes.Length);
        }
        else
        {
            nint p = (nint)NativeMemory.Alloc((nuint)Math.Max(1, bytes.Length));
            bytes.CopyTo(new Span<byte>((void*)p, bytes.Length));
            value = new Value(default, p, bytes.Length);
        }
        Dictionary<string, Value> shard = Shard(key);
        Value old;
        bool had;
        lock (shard)
        {
            had = shard.TryGetValue(key, out old);
            shard[key] = value;
        }
        if (had) Free(old);
    }

    /// <summary>Appends the RESP bulk string of <paramref name="key"/>'s value (or a null bulk) to <paramref name="output"/>.</summary>
    public void Get(string key, OutputBuffer output)
    {
        Dictionary<string, Value> shard = Shard(key);
        lock (shard)
        {
            if (!shard.TryGetValue(key, out Value v))
            {
                output.Write("$-1\r\n"u8);
                return;
            }
            output.WriteBulkHeader(v.Length);
            if (_heap != null)
            {
                using PinScope pin = _heap.Pin(v.Handle);
                output.Write(new ReadOnlySpan<byte>(pin.Pointer, v.Length));
            }
            else
            {
                output.Write(new ReadOnlySpan<byte>((void*)v.Pointer, v.Length));
            }
            output.Write("\r\n"u8);
        }
    }

    private void Free(Value v)
    {
        if (_heap != null) _heap.Free(v.Handle);
        else NativeMemory.Free((void*)v.Pointer);
    }

    public void Dispose()
    {
        foreach (Dictionary<string, Value> shard in _shards)
            lock (shard)
            {
                foreach (Value v in shard.Values) Free(v);
                shard.Clear();
            }
        _heap?.Dispose();
    }
}

/// <summary>A connection's replies, sent when the commands received so far have all been answered.</summary>
internal sealed class OutputBuffer
{
    private byte[] _buffer = new byte[64 * 1024];
    private int _length;

    public void Write(ReadOnlySpan<byte> bytes)
    {
        if (_length + bytes.Length > _buffer.Length) Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + bytes.Length));
        bytes.CopyTo(_buffer.AsSpan(_length));
        _length += bytes.Length;
    }

    public void WriteBulkHeader(int length)
    {
        Span<byte> header = stackalloc byte[16];
        header[0] = (byte)'$';
        length.TryFormat(header[1..], out int digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        header[1 + digits] = (byte)'\r';
        header[2 + digits] = (byte)'\n';
        Write(header[..(3 + digits)]);
    }

    public void Flush(Socket socket)
    {
        int sent = 0;
        while (sent < _length) sent += socket.Send(_buffer, sent, _length - sent, SocketFlags.None);
        _length = 0;
    }
}

/// <summary>One client connection: RESP arrays of bulk strings parsed from one receive buffer (no copy of a value
/// into managed memory), answered in order; replies go out once every complete command received is answered.</summary>
internal static class Connection
{
    private const int MaxArgs = 8;

    public static void Serve(Socket socket, ValueStore store)
    {
        byte[] input = new byte[256 * 1024];
        int start = 0, end = 0;
        var output = new OutputBuffer();
        Span<(int offset, int length)> args = stackalloc (int, int)[MaxArgs];
        try
        {
            while (true)
            {
                int n;
                while ((n = TryParse(input, start, end, args, out int count)) > 0)
                {
                    Execute(input, args[..count], store, output);
                    start += n;
                }
                if (n < 0)
                {
                    output.Write("-ERR protocol error\r\n"u8);
                    output.Flush(socket);
                    return;
                }
                output.Flush(socket);
                // Keep the incomplete command at the front; grow only when it fills the whole buffer.
                if (start > 0)
                {
                    Buffer.BlockCopy(input, start, input, 0, end - start);
                    end -= start;
                    start = 0;
                }
                if (end == input.Length) Array.Resize(ref input, input.Length * 2);
                int got = socket.Receive(input, end, input.Length - end, SocketFlags.None);
                if (got == 0) return;
                end += got;
            }
        }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        finally
        {
            socket.Dispose();
        }
    }

    private static void Execute(byte[] input, ReadOnlySpan<(int offset, int length)> args, ValueStore store, OutputBuffer output)
    {
        ReadOnlySpan<byte> cmd = Arg(input, args[0]);
        if (cmd.Length == 3 && Ascii.EqualsIgnoreCase(cmd, "SET"u8) && args.Length >= 3)
        {
            store.Set(Encoding.ASCII.GetString(Arg(input, args[1])), Arg(input, args[2]));
            output.Write("+OK\r\n"u8);
        }
        else if (cmd.Length == 3 && Ascii.EqualsIgnoreCase(cmd, "GET"u8) && args.Length >= 2)
        {
            store.Get(Encoding.ASCII.GetString(Arg(input, args[1])), output);
        }
        else if (Ascii.EqualsIgnoreCase(cmd, "PING"u8))
        {
            output.Write("+PONG\r\n"u8);
        }
        else if (Ascii.EqualsIgnoreCase(cmd, "CONFIG"u8))
        {
            output.Write("*2\r\n$4\r\nsave\r\n$0\r\n\r\n"u8);   // what redis-benchmark asks for at start: no persistence
        }
        else
        {
            output.Write("-ERR unknown command\r\n"u8);
        }
    }

    private static ReadOnlySpan<byte> Arg(byte[] input, (int offset, int length) arg) => input.AsSpan(arg.offset, arg.length);

    /// <summary>Parses one RESP array of bulk strings from <c>buffer[start..end)</c>: the bytes it took (its
    /// arguments' offsets and lengths in <paramref name="args"/>), 0 when it is not complete yet, -1 when it is not
    /// RESP this server speaks.</summary>
    private static int TryParse(byte[] buffer, int start, int end, Span<(int offset, int length)> args, out int count)
    {
        count = 0;
        int p = start;
        if (p >= end) return 0;
        if (buffer[p] != '*') return -1;
        p++;
        if (!TryReadNumber(buffer, ref p, end, out long n)) return 0;
        if (n < 1 || n > args.Length) return -1;
        for (int i = 0; i < n; i++)
        {
            if (p >= end) return 0;
            if (buffer[p] != '$') return -1;
            p++;
            if (!TryReadNumber(buffer, ref p, end, out long len)) return 0;
            if (len < 0 || len > 64 << 20) return -1;
            if (end - p < len + 2) return 0;
            args[i] = (p, (int)len);
            p += (int)len + 2;
        }
        count = (int)n;
        return p - start;
    }

    /// <summary>Reads a decimal number ended by CRLF; false when the CRLF has not arrived yet.</summary>
    private static bool TryReadNumber(byte[] buffer, ref int p, int end, out long value)
    {
        value = 0;
        int q = p;
        bool negative = q < end && buffer[q] == '-';
        if (negative) q++;
        while (q < end && buffer[q] != '\r')
        {
            value = value * 10 + (buffer[q] - '0');
            q++;
        }
        if (q + 1 >= end) return false;
        if (negative) value = -value;
        p = q + 2;
        return true;
    }
}
