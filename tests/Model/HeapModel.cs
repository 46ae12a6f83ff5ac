using System.Buffers;
using Compaction.Allocator;
using Compaction.Allocator.Diagnostics;
using Compaction.Interop;

namespace Compaction.Tests.Model;

/// <summary>One generated step of a model-based run: what to do, and two numbers that choose its target and
/// arguments (taken modulo whatever the step chooses from, so every sequence, and every shrunk sequence, is valid).</summary>
internal readonly record struct Op(OpKind Kind, int A, int B)
{
    public override string ToString() => $"{Kind}({A},{B})";
}

/// <summary>Every public operation the model-based tests generate (see <see cref="ModelRun"/> for what each must do).</summary>
internal enum OpKind : byte
{
    AllocSmall, AllocMedium, AllocLarge, AllocBoundary, AllocBadArgument, AllocContext,
    Free, FreeContext, FreeWhileScoped, Verify, Rewrite,
    AcquirePin, ReleasePin, ReleasePinOnOtherThread,
    PinLongTerm, PinLongTermBatch, PinLongTermWhilePinned, ReleaseLongTerm,
    SetOwner, ClearOwner,
    Compact, Step, Release, Statistics,
    Rent, RentLongTerm, Return,
    Stale, Forged, StablePointer, Dispose,
    OsRefuse, OsAllow,
}

/// <summary>How a generated movable owner answers the compactor.</summary>
internal enum OwnerBehaviour { Agree, RefuseIsolate, TryAgain, ThrowOnIsolate, ThrowOnMigrate, ReenterHeap }

/// <summary>What the model knows of one live block: its handle, size, kind, contents (a window of
/// <see cref="ModelContent"/>), the pins it holds and where they saw it, its owner.</summary>
internal sealed class ModelBlock(BlockHandle handle, long size, BlockKind kind, int seed)
{
    public readonly BlockHandle Handle = handle;
    public readonly long Size = size;
    public BlockKind Kind = kind;
    public int Seed = seed;
    public readonly List<(BlockPin pin, nint address)> Pins = [];
    public readonly List<BlockPin> LongTermPins = [];
    public ModelOwner? Owner;
    /// <summary>The address of an unmovable block, once seen: it must never change.</summary>
    public nint StableAddress;
    public bool Pinned => Pins.Count > 0 || LongTermPins.Count > 0;
}

/// <summary>A rented pool buffer the model tracks.</summary>
internal sealed class ModelRent(IMemoryOwner<byte> owner, int seed, bool longTerm)
{
    public readonly IMemoryOwner<byte> Owner = owner;
    public readonly int Seed = seed;
    public readonly bool LongTerm = longTerm;
}

/// <summary>The contents every block holds: a window of fixed noise chosen by the block's seed, so a copy that lands
/// at a wrong offset, a torn copy or a stray write shows as a mismatch (the noise has no period).</summary>
internal static class ModelContent
{
    public const int Seeds = 1 << 16;
    public const int SeedStride = 16;
    public const int MaxBlock = 2 << 20;
    private static readonly byte[] s_noise = MakeNoise();

    private static byte[] MakeNoise()
    {
        var b = new byte[Seeds * SeedStride + MaxBlock];
        new Random(20261201).NextBytes(b);
        return b;
    }

    public static ReadOnlySpan<byte> Of(int seed, long size) => s_noise.AsSpan(seed * SeedStride, (int)size);
}

/// <summary>A movable owner that behaves as generated and checks what the compactor does to it: it is only ever
/// called for its own block, never after its block was freed or it was replaced, and never asked to complete the
/// move of a pinned block; the bytes at the new address are the block's bytes when it is asked.</summary>
internal sealed unsafe class ModelOwner(ModelRun run, ModelBlock block, OwnerBehaviour behaviour) : IMovableBlockOwner
{
    public readonly OwnerBehaviour Behaviour = behaviour;
    /// <summary>Set when the owner stops being the block's (freed, replaced, cleared, forgotten by a long-term pin).</summary>
    public bool Retired;
    /// <summary>True when the owner never lets its block move.</summary>
    public bool Refuses => Behaviour is not (OwnerBehaviour.Agree or OwnerBehaviour.ReenterHeap);

    private void Check(BlockHandle h, string call)
    {
        if (h != block.Handle) run.Violation($"owner of {block.Handle} called ({call}) with {h}");
        // A compactor on another thread may have looked the owner up just before its registration ended (the block
        // freed, re-owned, long-term pinned): it may then still get Isolate and Putback, never Migrate (the freeze
        // fails). On one thread the callbacks run inside the steps, so no call may come late at all.
        if (Retired && (!run.Shared || call == "Migrate")) run.Violation($"retired owner of {block.Handle} called ({call})");
    }

    public bool Isolate(BlockHandle handle)
    {
        Check(handle, "Isolate");
        return Behaviour switch
        {
            OwnerBehaviour.RefuseIsolate => false,
            OwnerBehaviour.ThrowOnIsolate => throw new InvalidOperationException("generated owner throws from Isolate"),
            _ => true,
        };
    }

    public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress)
    {
        Check(handle, "Migrate");
        // Racy in the concurrent variant (the block's thread changes its pin lists meanwhile), and safe for this check:
        // a pin enters the lists after it is taken and leaves before it is released, so Pinned true means pinned.
        if (block.Pinned) run.Violation($"the compactor asked to complete the move of pinned {handle}");
        if (!new ReadOnlySpan<byte>((void*)newAddress, (int)block.Size).SequenceEqual(ModelContent.Of(block.Seed, block.Size)))
            run.Violation($"{handle}: the bytes at its new address differ from the block's when its owner is asked");
        switch (Behaviour)
        {
            case OwnerBehaviour.TryAgain: return OwnerMigrateResult.TryAgain;
            case OwnerBehaviour.ThrowOnMigrate: throw new InvalidOperationException("generated owner throws from Migrate");
            case OwnerBehaviour.ReenterHeap: Reenter(handle); break;
        }
        return OwnerMigrateResult.Success;
    }

    /// <summary>Uses the heap from inside the callback: other blocks work; the block being moved refuses.</summary>
    private void Reenter(BlockHandle handle)
    {
        NativeHeap heap = run.Heap;
        BlockHandle other = heap.Allocate(100);
        using (PinScope p = heap.Pin(other)) p.Span.Fill(7);
        heap.Free(other);
        run.ExpectInCallback<InvalidOperationException>(() => heap.Free(handle), "Free of the block being migrated, from its owner");
        run.ExpectInCallback<InvalidOperationException>(() => heap.Pin(handle).Dispose(), "Pin of the block being migrated, from its owner");
        run.ExpectInCallback<InvalidOperationException>(() => heap.Dispose(), "Dispose from inside a compaction");
        heap.Compact();   // skipped: a compaction from a callback does nothing
    }

    public void Putback(BlockHandle handle)
    {
        Check(handle, "Putback");
    }
}

/// <summary>
/// One model-based run: a heap, its two pools, and the reference model (the live blocks with their sizes, kinds,
/// contents and pins; the rented buffers; the stale handles; whether the heap was disposed). <see cref="Apply"/> runs
/// one step on the heap and on the model and checks the outcome: the value or exception each call must give, the
/// touched block's bytes, and after every step the heap's live counts against the model's; every step that may move
/// blocks also checks every block's bytes and that no pinned or unmovable block moved; the validator runs every
/// <see cref="ValidateEvery"/> steps and at the end. A difference throws <see cref="ModelViolationException"/>.
/// </summary>
internal sealed unsafe class ModelRun : IDisposable
{
    public const int ValidateEvery = 32;
    private const long LiveCap = 12L << 20;        // the model keeps live bytes below this (the arena is 64 MiB)
    private const long OomExcusedAbove = 6L << 20; // an allocation of at most 64 KiB may fail only above this

    public readonly NativeHeap Heap;
    private readonly ArenaMemoryPool _pool, _longTermPool;
    private readonly List<ModelBlock> _blocks = [];
    private readonly List<ModelRent> _rents = [];
    private readonly List<BlockHandle> _stale = [];
    private readonly HashSet<ulong> _issued = [];
    private readonly List<string> _violations = [];
    private readonly long[] _boundaries;
    private long _liveBytes;
    private TimeSpan _clock;
    private bool _disposed;
    private int _steps;
    private readonly bool _shared;
    private FaultyOsMemory? _os;            // the heap's OS layer when it refuses calls (OsRefuse, OsAllow)
    private bool _osRefusing;               // rules are set: allocations may fail until OsAllow

    /// <summary>A run on a heap of its own (the single-threaded suite): counts checked after every step, the
    /// validator every <see cref="ValidateEvery"/> steps.</summary>
    public ModelRun(bool poison = false, bool faults = false) : this(faults ? new FaultyOsMemory() : null, poison) { }

    private ModelRun(FaultyOsMemory? os, bool poison) : this(NewHeap(64L << 20, poison: poison, os: os), shared: false) => _os = os;

    /// <summary>A run on <paramref name="heap"/>, which other runs may share (<paramref name="shared"/>): then each
    /// run checks its own blocks, bytes, pins and exceptions only; the heap's counts and the validator are the caller's
    /// to check once every run ended, and Dispose is not generated.</summary>
    public ModelRun(NativeHeap heap, bool shared)
    {
        _shared = shared;
        Heap = heap;
        _pool = new ArenaMemoryPool(Heap, new ArenaMemoryPoolOptions { MaxBufferSize = 1 << 20 });
        _longTermPool = new ArenaMemoryPool(Heap, new ArenaMemoryPoolOptions { MaxBufferSize = 1 << 20, LongTermPins = true });
        _boundaries = Boundaries(Heap);
    }

    /// <summary>A heap for model runs; with <paramref name="os"/>, over an OS layer that refuses what the steps say.</summary>
    public static NativeHeap NewHeap(long arenaBytes, bool background = false, bool poison = false, FaultyOsMemory? os = null) => new(new HeapOptions
    {
        PoisonFreedMemory = poison,
        ArenaBytes = arenaBytes, PageblockPages = 64, MovableZonePercent = 50,
        DecommitDelay = TimeSpan.FromSeconds(1), Proactiveness = background ? 100 : 50,
        CompactionInterval = TimeSpan.FromMilliseconds(1), WasteHighRatio = 1.05, WasteLowRatio = 1.0, WasteMinBytes = 1 << 20,
        CompactionCpuShare = 0.5,
    }, os ?? OsMemory.Default);

    /// <summary>Sizes at the edges of the heap's size classes, of a slab, a page and a pageblock.</summary>
    private static long[] Boundaries(NativeHeap heap)
    {
        var sizes = new SortedSet<long>();
        foreach (int s in heap.Classes.Size) { sizes.Add(s); sizes.Add(s + 1); sizes.Add(Math.Max(1, s - 1)); }
        long page = heap.Options.PageSize, pageblock = page * heap.Options.PageblockPages, threshold = heap.Options.SlabThreshold;
        foreach (long s in new[] { threshold, page, 2 * page, pageblock, 2 * pageblock, 3 * pageblock })
        {
            sizes.Add(s - 1); sizes.Add(s); sizes.Add(s + 1);
        }
        return [.. sizes];
    }

    public bool Shared => _shared;

    /// <summary>Records what an owner callback saw wrong (it may run on a compacting thread of its own).</summary>
    public void Violation(string what)
    {
        lock (_violations) _violations.Add(what);
    }

    private static void Fail(string what) => throw new ModelViolationException(what);

    public void ExpectInCallback<TEx>(Action call, string what) where TEx : Exception
    {
        try { call(); }
        catch (TEx) { return; }
        catch (Exception e) { Violation($"{what}: threw {e.GetType().Name} ({e.Message}), {typeof(TEx).Name} expected"); return; }
        Violation($"{what}: returned, {typeof(TEx).Name} expected");
    }

    private static void Expect<TEx>(Action call, string what) where TEx : Exception
    {
        try { call(); }
        catch (TEx) { return; }
        catch (Exception e) { Fail($"{what}: threw {e.GetType().Name} ({e.Message}), {typeof(TEx).Name} expected"); }
        Fail($"{what}: returned, {typeof(TEx).Name} expected");
    }

    // ------------------------------------------------------------------ the step

    public void Apply(Op op)
    {
        _steps++;
        if (_disposed) { AfterDispose(op); return; }
        switch (op.Kind)
        {
            case OpKind.AllocSmall: Allocate(1 + op.A % 1024, op.B, context: false); break;
            case OpKind.AllocMedium: Allocate(1025 + op.A % (2 * Heap.Options.SlabThreshold), op.B, context: false); break;
            case OpKind.AllocLarge: Allocate(Heap.Options.PageSize * (1L + op.A % 160) - op.B % 2, op.B, context: false); break;
            case OpKind.AllocBoundary: Allocate(_boundaries[op.A % _boundaries.Length], op.B, context: false); break;
            case OpKind.AllocContext: Allocate(1 + op.A % 4096, op.B, context: true); break;
            case OpKind.AllocBadArgument: AllocateBadArgument(op); break;
            case OpKind.Free: Free(op, context: false); break;
            case OpKind.FreeContext: Free(op, context: true); break;
            case OpKind.FreeWhileScoped: FreeWhileScoped(op); break;
            case OpKind.Verify: if (Pick(op.A) is { } v) Verify(v); break;
            case OpKind.Rewrite: Rewrite(op); break;
            case OpKind.AcquirePin: AcquirePin(op); break;
            case OpKind.ReleasePin: ReleasePin(op, otherThread: false); break;
            case OpKind.ReleasePinOnOtherThread: ReleasePin(op, otherThread: true); break;
            case OpKind.PinLongTerm: PinLongTerm(op); break;
            case OpKind.PinLongTermBatch: PinLongTermBatch(op); break;
            case OpKind.PinLongTermWhilePinned: PinLongTermWhilePinned(op); break;
            case OpKind.ReleaseLongTerm: ReleaseLongTerm(op); break;
            case OpKind.SetOwner: SetOwner(op); break;
            case OpKind.ClearOwner: ClearOwner(op); break;
            case OpKind.Compact: Heap.Compact(); CheckEverything("Compact"); break;
            case OpKind.Step:
                _clock += TimeSpan.FromMilliseconds(op.A % 3000);
                Heap.RunCompactionStep(_clock);
                CheckEverything("RunCompactionStep");
                break;
            case OpKind.Release: Heap.ReleaseFreeMemory(); CheckEverything("ReleaseFreeMemory"); break;
            case OpKind.Statistics: Statistics(); break;
            case OpKind.Rent: Rent(op, _pool, longTerm: false); break;
            case OpKind.RentLongTerm: Rent(op, _longTermPool, longTerm: true); break;
            case OpKind.Return: Return(op); break;
            case OpKind.Stale: Stale(op); break;
            case OpKind.Forged: Forged(op); break;
            case OpKind.StablePointer: StablePointer(op); break;
            case OpKind.Dispose: if (!_shared) DisposeHeap(); break;
            case OpKind.OsRefuse:
                if (_os == null) break;
                // The next few commits, purges or decommits, or huge-page advice calls in the arena are refused.
                OsCall call = ((uint)op.B % 3) switch { 0 => OsCall.Protect, 1 => OsCall.DontNeed, _ => OsCall.NoHugePage };
                _os.RefuseInArena(Heap, call, times: 1 + (int)((uint)op.A % 8), skip: (int)((uint)op.A / 8 % 4));
                _osRefusing = true;
                break;
            case OpKind.OsAllow: _os?.Allow(); _osRefusing = false; break;
        }
        lock (_violations)
            if (_violations.Count > 0) Fail(string.Join("; ", _violations));
        if (!_disposed && !_shared)
        {
            CheckCounts();
            if (_steps % ValidateEvery == 0) Validate();
        }
    }

    private ModelBlock? Pick(int a) => _blocks.Count == 0 ? null : _blocks[(int)((uint)a % (uint)_blocks.Count)];

    /// <summary>The first block that <paramref name="wanted"/> accepts, except one time in <paramref name="tries"/>
    /// (chosen by <paramref name="a"/>) or when none does: then any block, which the caller may find unfit.</summary>
    private ModelBlock? PickMostlyFirst(int a, Predicate<ModelBlock> wanted, int tries) =>
        ((uint)a % (uint)tries != 0 ? _blocks.Find(wanted) : null) ?? Pick(a);

    private static int SeedOf(int b) => (int)((uint)b % ModelContent.Seeds);

    // ------------------------------------------------------------------ allocate and free

    private void Allocate(long size, int b, bool context)
    {
        BlockKind kind = b % 3 == 0 ? BlockKind.Unmovable : BlockKind.Movable;
        if (_liveBytes + size > LiveCap || size > ModelContent.MaxBlock) { Free(new Op(OpKind.Free, b, 0), context); return; }
        BlockHandle h;
        bool ok;
        try
        {
            if (context) { HeapContext ctx = Heap.GetThreadContext(); ok = (b & 4) == 0 ? ctx.TryAllocate(size, kind, out h) : Try(ctx.Allocate(size, kind), out h); }
            else ok = (b & 4) == 0 ? Heap.TryAllocate(size, kind, out h) : Try(Heap.Allocate(size, kind), out h);
        }
        catch (OutOfMemoryException) { ok = false; h = default; }
        if (!ok)
        {
            if (size <= 64 << 10 && _liveBytes + size <= OomExcusedAbove && !_osRefusing) Fail($"allocating {size} B ({kind}) failed with {_liveBytes} B live");
            return;
        }
        if (h.IsNull) Fail("an allocation returned the null handle");
        // A handle value is issued once in a heap's life (the generation moves on at every free, an entry whose
        // generation would wrap retires): a stale copy must never come to name a new block.
        if (!_issued.Add(h.Value)) Fail($"{h} issued a second time: a stale copy of it would now name the new block");
        var block = new ModelBlock(h, size, kind, SeedOf(b * 31 + (int)size));
        if (Heap.GetSize(h) != size) Fail($"{h}: GetSize {Heap.GetSize(h)}, {size} allocated");
        if (Heap.GetKind(h) != kind) Fail($"{h}: GetKind {Heap.GetKind(h)}, {kind} allocated");
        if (!Heap.IsLive(h)) Fail($"{h}: IsLive false after its allocation");
        Write(block);
        if (kind == BlockKind.Unmovable) block.StableAddress = Heap.GetStablePointer(h);
        _blocks.Add(block);
        _liveBytes += size;
    }

    private static bool Try(BlockHandle allocated, out BlockHandle h)
    {
        h = allocated;
        return true;
    }

    private void AllocateBadArgument(Op op)
    {
        long[] sizes = [0, -1, long.MinValue, Heap.MaxBlockSize + 1, long.MaxValue];
        long size = sizes[(uint)op.A % sizes.Length];
        if ((op.B & 1) == 0) Expect<ArgumentOutOfRangeException>(() => Heap.Allocate(size), $"Allocate({size})");
        else Expect<ArgumentOutOfRangeException>(() => Heap.TryAllocate(size, BlockKind.Movable, out _), $"TryAllocate({size})");
        Expect<ArgumentOutOfRangeException>(() => Heap.Allocate(16, (BlockKind)(2 + (uint)op.B % 100)), "Allocate with an unknown kind");
        Expect<ArgumentOutOfRangeException>(() => _pool.Rent((1 << 20) + 1 + (op.B & 0xFFFF)), "Rent above the pool's largest buffer");
        Expect<ArgumentOutOfRangeException>(() => _pool.Rent(-2 - (op.B & 0xFFFF)), "Rent of a negative size");
    }

    private void Free(Op op, bool context)
    {
        if (Pick(op.A) is not { } block) return;
        if (block.Pinned)
        {
            Expect<InvalidOperationException>(() => FreeThrough(block.Handle, context), $"Free of pinned {block.Handle}");
            Verify(block);
            return;
        }
        Verify(block);
        FreeThrough(block.Handle, context);
        Forget(block);
        Expect<InvalidBlockHandleException>(() => FreeThrough(block.Handle, !context), $"second Free of {block.Handle}");
        if (Heap.IsLive(block.Handle)) Fail($"{block.Handle}: IsLive true after its free");
    }

    private void FreeThrough(BlockHandle h, bool context)
    {
        if (context) Heap.GetThreadContext().Free(h);
        else Heap.Free(h);
    }

    private void Forget(ModelBlock block)
    {
        _blocks.Remove(block);
        _liveBytes -= block.Size;
        if (block.Owner != null) block.Owner.Retired = true;
        _stale.Add(block.Handle);
        if (_stale.Count > 256) _stale.RemoveAt(0);
    }

    private void FreeWhileScoped(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        using PinScope pin = Heap.Pin(block.Handle);
        BlockHandle h = block.Handle;
        Expect<InvalidOperationException>(() => Heap.Free(h), $"Free of {h} inside this thread's PinScope");
        if (!pin.Span.SequenceEqual(ModelContent.Of(block.Seed, block.Size))) Fail($"{h}: bytes changed under a PinScope");
    }

    // ------------------------------------------------------------------ contents

    private void Write(ModelBlock block)
    {
        using PinScope pin = Heap.Pin(block.Handle);
        if (pin.Length != block.Size) Fail($"{block.Handle}: a pin of {pin.Length} B, {block.Size} allocated");
        ModelContent.Of(block.Seed, block.Size).CopyTo(pin.Span);
    }

    private void Verify(ModelBlock block)
    {
        using PinScope pin = Heap.Pin(block.Handle);
        if (pin.Length != block.Size) Fail($"{block.Handle}: a pin of {pin.Length} B, {block.Size} allocated");
        if (!pin.Span.SequenceEqual(ModelContent.Of(block.Seed, block.Size))) Fail($"{block.Handle} ({block.Size} B, {block.Kind}): bytes lost or torn");
        foreach ((BlockPin p, nint address) in block.Pins)
            if (pin.Address != address || p.Address != address) Fail($"{block.Handle} moved while pinned ({address:x} -> {pin.Address:x})");
        if (block.StableAddress != 0 && pin.Address != block.StableAddress) Fail($"unmovable {block.Handle} moved ({block.StableAddress:x} -> {pin.Address:x})");
    }

    private void Rewrite(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        if (block.Pins.Count > 0)
        {
            block.Seed = SeedOf(op.B);
            ModelContent.Of(block.Seed, block.Size).CopyTo(block.Pins[0].pin.Span);
        }
        else
        {
            // The seed changes only while the block is pinned, so an owner callback on a compacting thread never
            // compares the new seed with the old bytes.
            using PinScope pin = Heap.Pin(block.Handle);
            block.Seed = SeedOf(op.B);
            ModelContent.Of(block.Seed, block.Size).CopyTo(pin.Span);
        }
        Verify(block);
    }

    /// <summary>After a step that may move blocks: every block's bytes, every pinned block's address, the counts.</summary>
    private void CheckEverything(string after)
    {
        foreach (ModelBlock b in _blocks) Verify(b);
        foreach (ModelRent r in _rents)
            if (!r.Owner.Memory.Span.SequenceEqual(ModelContent.Of(r.Seed, r.Owner.Memory.Length))) Fail($"a rented buffer's bytes changed after {after}");
    }

    // ------------------------------------------------------------------ pins

    private void AcquirePin(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        BlockPin pin = Heap.AcquirePin(block.Handle);
        if (pin.Handle != block.Handle || pin.Length != block.Size) Fail($"{block.Handle}: its pin names {pin.Handle}, {pin.Length} B");
        if (!pin.Span.SequenceEqual(ModelContent.Of(block.Seed, block.Size))) Fail($"{block.Handle}: bytes differ through its pin");
        block.Pins.Add((pin, pin.Address));
    }

    private void ReleasePin(Op op, bool otherThread)
    {
        ModelBlock? block = PickMostlyFirst(op.A, b => b.Pins.Count > 0, tries: 4);
        if (block == null || block.Pins.Count == 0) return;
        int k = (int)((uint)op.B % (uint)block.Pins.Count);
        (BlockPin pin, nint address) = block.Pins[k];
        block.Pins.RemoveAt(k);
        BlockPin copy = pin;
        if (otherThread)
        {
            // An atomic pin handed to another thread, which checks the bytes and releases it there.
            Exception? error = null;
            var t = new Thread(() =>
            {
                try
                {
                    if (pin.Address != address) throw new ModelViolationException("a pin's address changed on its way between threads");
                    pin.Dispose();
                }
                catch (Exception e) { error = e; }
            });
            t.Start();
            t.Join();
            if (error != null) Fail($"releasing {block.Handle}'s pin on another thread: {error.Message}");
        }
        else pin.Dispose();
        if (copy.IsHeld) Fail("a released pin still reports IsHeld");
        copy.Dispose();   // a copy released again does nothing
        Expect<ObjectDisposedException>(() => _ = copy.Span.Length, "Span of a released pin");
        Verify(block);
    }

    private void PinLongTerm(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        if (block.Pins.Count > 0) return;   // waits LongTermPinPatience: PinLongTermWhilePinned tests that, rarely
        if (block.Owner is { Refuses: true })
        {
            // Its owner may refuse for ever: the pin gives up after LongTermPinPatience and nothing changes.
            ExpectRefused(() => Heap.PinLongTerm(block.Handle), $"PinLongTerm of {block.Handle}, whose owner refuses ({block.Owner.Behaviour})");
            if (Heap.GetKind(block.Handle) != BlockKind.Movable) Fail($"{block.Handle}: a refused long-term pin changed its kind");
            Verify(block);
            return;
        }
        BlockPin pin;
        try { pin = Heap.PinLongTerm(block.Handle); }
        catch (OutOfMemoryException) when (_liveBytes > OomExcusedAbove || _osRefusing)
        {
            if (Heap.GetKind(block.Handle) != block.Kind) Fail($"{block.Handle}: a long-term pin that failed changed its kind");
            return;
        }
        AfterLongTermPin(block, pin);
    }

    private void AfterLongTermPin(ModelBlock block, BlockPin pin)
    {
        if (pin.Handle != block.Handle || pin.Length != block.Size) Fail($"{block.Handle}: its long-term pin names {pin.Handle}, {pin.Length} B");
        block.LongTermPins.Add(pin);
        if (block.Kind == BlockKind.Movable)
        {
            // Moved into unmovable memory for good; its owner was told and forgotten.
            block.Kind = BlockKind.Unmovable;
            if (block.Owner != null) { block.Owner.Retired = true; block.Owner = null; }
        }
        if (Heap.GetKind(block.Handle) != BlockKind.Unmovable) Fail($"{block.Handle}: movable after a long-term pin");
        nint stable = Heap.GetStablePointer(block.Handle);
        if (stable != pin.Address) Fail($"{block.Handle}: its long-term pin's address differs from its stable pointer");
        if (block.StableAddress != 0 && block.StableAddress != stable) Fail($"unmovable {block.Handle} moved for a long-term pin");
        block.StableAddress = stable;
        if (!pin.Span.SequenceEqual(ModelContent.Of(block.Seed, block.Size))) Fail($"{block.Handle}: bytes differ after its long-term pin");
    }

    /// <summary>A long-term pin the owner refuses: InvalidOperationException, or OutOfMemoryException when no
    /// unmovable destination can be had first (the OS refuses commits, or the heap is full).</summary>
    private void ExpectRefused(Action call, string what)
    {
        if (_osRefusing || _liveBytes > OomExcusedAbove)
        {
            try { call(); }
            catch (OutOfMemoryException) { return; }
            catch (InvalidOperationException) { return; }
            catch (Exception e) { Fail($"{what}: threw {e.GetType().Name} ({e.Message})"); }
            Fail($"{what}: returned, InvalidOperationException or OutOfMemoryException expected");
        }
        Expect<InvalidOperationException>(call, what);
    }

    private void PinLongTermBatch(Op op)
    {
        var chosen = new List<ModelBlock>();
        for (int i = 0; i < 1 + (uint)op.B % 4; i++)
            if (Pick(op.A + i * 7919) is { } b && b.Pins.Count == 0 && !chosen.Contains(b)) chosen.Add(b);
        if (chosen.Count == 0) return;
        BlockHandle[] handles = [.. chosen.Select(b => b.Handle)];
        var pins = new BlockPin[handles.Length];
        if (chosen.Exists(b => b.Owner is { Refuses: true }))
        {
            // All or nothing: no pin stays held; blocks moved before the refusal stay unmovable, their owners forgotten.
            ExpectRefused(() => Heap.PinLongTerm(handles, pins), "a long-term batch with a refusing owner");
            if (pins.Any(p => p.IsHeld)) Fail("a failed long-term batch left a pin held");
            foreach (ModelBlock b in chosen) AfterFailedLongTermPin(b);
            return;
        }
        try { Heap.PinLongTerm(handles, pins); }
        catch (OutOfMemoryException) when (_liveBytes > OomExcusedAbove || _osRefusing)
        {
            if (pins.Any(p => p.IsHeld)) Fail("a failed long-term batch left a pin held");
            foreach (ModelBlock b in chosen) AfterFailedLongTermPin(b);
            return;
        }
        for (int i = 0; i < chosen.Count; i++) AfterLongTermPin(chosen[i], pins[i]);
    }

    /// <summary>After a long-term batch failed: its blocks already moved stay unmovable (their owners forgotten),
    /// the others are as they were; every one keeps its bytes.</summary>
    private void AfterFailedLongTermPin(ModelBlock b)
    {
        if (b.Kind == BlockKind.Movable && Heap.GetKind(b.Handle) == BlockKind.Unmovable)
        {
            if (b.Owner is { Refuses: true }) Fail($"{b.Handle} moved although its owner refused ({b.Owner.Behaviour})");
            b.Kind = BlockKind.Unmovable;
            if (b.Owner != null) { b.Owner.Retired = true; b.Owner = null; }
            b.StableAddress = Heap.GetStablePointer(b.Handle);
        }
        Verify(b);
    }

    private void PinLongTermWhilePinned(Op op)
    {
        ModelBlock? block = _blocks.Find(b => b.Pins.Count > 0 && b.Kind == BlockKind.Movable);
        if (block == null) return;
        Expect<InvalidOperationException>(() => Heap.PinLongTerm(block.Handle), $"PinLongTerm of {block.Handle} held by an atomic pin");
        if (Heap.GetKind(block.Handle) != BlockKind.Movable) Fail($"{block.Handle}: a refused long-term pin changed its kind");
        Verify(block);
    }

    private void ReleaseLongTerm(Op op)
    {
        ModelBlock? block = PickMostlyFirst(op.A, b => b.LongTermPins.Count > 0, tries: 3);
        if (block == null || block.LongTermPins.Count == 0) return;
        BlockPin pin = block.LongTermPins[^1];
        block.LongTermPins.RemoveAt(block.LongTermPins.Count - 1);
        pin.Dispose();
        if (Heap.GetKind(block.Handle) != BlockKind.Unmovable) Fail($"{block.Handle}: movable again after its long-term pin ended");
        Verify(block);
    }

    // ------------------------------------------------------------------ owners

    private void SetOwner(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        var owner = new ModelOwner(this, block, (OwnerBehaviour)((uint)op.B % 6));
        if (block.Kind == BlockKind.Unmovable)
        {
            Expect<InvalidOperationException>(() => Heap.SetMovableOwner(block.Handle, owner), $"SetMovableOwner on unmovable {block.Handle}");
            return;
        }
        Heap.SetMovableOwner(block.Handle, owner);
        if (block.Owner != null) block.Owner.Retired = true;
        block.Owner = owner;
    }

    private void ClearOwner(Op op)
    {
        if (Pick(op.A) is not { } block || block.Kind == BlockKind.Unmovable) return;
        Heap.SetMovableOwner(block.Handle, null);
        if (block.Owner != null) block.Owner.Retired = true;
        block.Owner = null;
    }

    // ------------------------------------------------------------------ pools

    private void Rent(Op op, ArenaMemoryPool pool, bool longTerm)
    {
        int size = (uint)op.A % 8 == 0 ? -1 : (uint)op.A % 8 == 1 ? 0 : 1 + (int)((uint)op.A % 65536);
        int bytes = size == -1 ? 4096 : Math.Max(1, size);
        if (_liveBytes + bytes > LiveCap) { Return(op); return; }
        IMemoryOwner<byte> owner;
        try { owner = pool.Rent(size); }
        catch (OutOfMemoryException) when (_osRefusing || _liveBytes > OomExcusedAbove) { return; }
        if (owner.Memory.Length != bytes) Fail($"Rent({size}) gave {owner.Memory.Length} B");
        var rent = new ModelRent(owner, SeedOf(op.B), longTerm);
        ModelContent.Of(rent.Seed, bytes).CopyTo(owner.Memory.Span);
        using (MemoryHandle mh = owner.Memory.Pin())
            if (!new ReadOnlySpan<byte>(mh.Pointer, bytes).SequenceEqual(ModelContent.Of(rent.Seed, bytes))) Fail("a rented buffer's Pin() sees other bytes");
        _rents.Add(rent);
        _liveBytes += bytes;
    }

    private void Return(Op op)
    {
        if (_rents.Count == 0) return;
        ModelRent rent = _rents[(int)((uint)op.B % (uint)_rents.Count)];
        _rents.Remove(rent);
        Memory<byte> memory = rent.Owner.Memory;
        _liveBytes -= memory.Length;
        if (!memory.Span.SequenceEqual(ModelContent.Of(rent.Seed, memory.Length))) Fail("a rented buffer's bytes changed before its return");
        rent.Owner.Dispose();
        Expect<ObjectDisposedException>(() => _ = memory.Span.Length, "Span of a returned buffer");
        Expect<InvalidOperationException>(() => rent.Owner.Dispose(), "a buffer returned twice");
    }

    // ------------------------------------------------------------------ hostile handles

    /// <summary>Presents <paramref name="h"/> to entry point <paramref name="k"/>; each must throw
    /// <see cref="InvalidBlockHandleException"/>.</summary>
    private void Present(BlockHandle h, int k, string what)
    {
        NativeHeap heap = Heap;
        Action call = ((uint)k % 11) switch
        {
            0 => () => heap.Free(h),
            1 => () => heap.Pin(h).Dispose(),
            2 => () => heap.AcquirePin(h).Dispose(),
            3 => () => heap.PinLongTerm(h).Dispose(),
            4 => () => heap.GetSize(h),
            5 => () => heap.GetKind(h),
            6 => () => heap.GetStablePointer(h),
            7 => () => heap.SetMovableOwner(h, null),
            8 => () => heap.GetThreadContext().Free(h),
            9 => () => heap.GetThreadContext().Pin(h).Dispose(),
            _ => () => ((IDisposable)new NativeBlockMemoryManager(heap, h)).Dispose(),
        };
        Expect<InvalidBlockHandleException>(call, $"{what} {h} at entry point {(uint)k % 11}");
        if (heap.IsLive(h)) Fail($"IsLive accepted {what} {h}");
    }

    private void Stale(Op op)
    {
        if (_stale.Count == 0) return;
        Present(_stale[(int)((uint)op.A % (uint)_stale.Count)], op.B, "stale");
    }

    private void Forged(Op op)
    {
        ulong value = ((uint)op.B % 4) switch
        {
            0 => (ulong)(uint)op.A << 32 | (uint)op.B,
            1 => 0,                                                                       // the null handle
            // A live block's index under another generation: the nearest miss there is.
            _ => Pick(op.A) is { } b ? b.Handle.Value ^ ((ulong)(1 + (uint)op.B % 0xFFFF) << 32) : (ulong)op.A,
        };
        var h = new BlockHandle(value);
        if (_blocks.Exists(b => b.Handle == h)) return;   // a random value that names a live block is not a forgery
        Present(h, op.A, "forged");
    }

    private void StablePointer(Op op)
    {
        if (Pick(op.A) is not { } block) return;
        if (block.Kind == BlockKind.Movable)
            Expect<InvalidOperationException>(() => Heap.GetStablePointer(block.Handle), $"GetStablePointer of movable {block.Handle}");
        else if (Heap.GetStablePointer(block.Handle) != block.StableAddress) Fail($"unmovable {block.Handle} moved");
    }

    // ------------------------------------------------------------------ statistics, validation, dispose

    private void CheckCounts()
    {
        HeapStatistics s = Heap.GetStatistics();
        long blocks = _blocks.Count + _rents.Count;
        long longTerm = _blocks.Sum(b => (long)b.LongTermPins.Count) + _rents.Count(r => r.LongTerm);
        if (s.LiveBlocks != blocks || s.LiveBytes != _liveBytes || s.LongTermPins != longTerm)
            Fail($"statistics say {s.LiveBlocks} blocks, {s.LiveBytes} B, {s.LongTermPins} long-term pins; the model {blocks}, {_liveBytes} B, {longTerm}");
        // Every refusal the OS layer made is counted once, as the kind it was.
        if (_os != null && (s.CommitFailures != _os.Refused(OsCall.Protect) || s.DecommitFailures != _os.Refused(OsCall.DontNeed)
                            || s.AdviceFailures != _os.Refused(OsCall.NoHugePage) + _os.Refused(OsCall.HugePage)))
            Fail($"statistics count {s.CommitFailures} commit, {s.DecommitFailures} decommit, {s.AdviceFailures} advice failures; the OS refused "
                 + $"{_os.Refused(OsCall.Protect)}, {_os.Refused(OsCall.DontNeed)}, {_os.Refused(OsCall.NoHugePage) + _os.Refused(OsCall.HugePage)}");
    }

    private void Statistics()
    {
        HeapStatistics s = Heap.GetStatistics();
        if (s.FragmentationScore is < 0 or > 100) Fail($"fragmentation score {s.FragmentationScore}");
        if (s.CommittedBytes < 0 || s.CommittedBytes > s.ReservedBytes) Fail($"committed {s.CommittedBytes} of {s.ReservedBytes} reserved");
        if (s.PurgedFreeBytes < 0 || s.PurgedFreeBytes > s.CommittedBytes) Fail($"purged free {s.PurgedFreeBytes} of {s.CommittedBytes} committed");
        if (string.IsNullOrEmpty(s.BuddyInfo()) || string.IsNullOrEmpty(s.ToString())) Fail("empty statistics report");
    }

    public void Validate()
    {
        List<string> problems = Heap.Validate();
        if (problems.Count > 0) Fail("validator: " + string.Join("; ", problems.Take(5)));
    }

    private bool AnyPin => _rents.Count > 0 || _blocks.Exists(b => b.Pinned);

    private void DisposeHeap()
    {
        if (AnyPin)
        {
            Expect<InvalidOperationException>(Heap.Dispose, "Dispose with pins held");
            return;   // refused: the heap stays usable, the next steps show it
        }
        Heap.Dispose();
        _disposed = true;
        Heap.Dispose();   // twice does nothing
    }

    /// <summary>Every call on a disposed heap throws <see cref="ObjectDisposedException"/>.</summary>
    private void AfterDispose(Op op)
    {
        NativeHeap heap = Heap;
        BlockHandle h = _stale.Count > 0 ? _stale[(int)((uint)op.A % (uint)_stale.Count)] : new BlockHandle((ulong)op.A << 32 | 1);
        Action call = ((uint)op.B % 8) switch
        {
            0 => () => heap.Allocate(16),
            1 => () => heap.Free(h),
            2 => () => heap.Pin(h).Dispose(),
            3 => () => heap.Compact(),
            4 => () => heap.GetStatistics(),
            5 => () => heap.ReleaseFreeMemory(),
            6 => () => heap.GetThreadContext(),
            _ => () => _pool.Rent(16),
        };
        Expect<ObjectDisposedException>(call, $"call {(uint)op.B % 8} on a disposed heap");
    }

    /// <summary>The end of a run: every pin released, every buffer returned, the validator, the counts, every block
    /// freed, and the heap disposed (which must now succeed).</summary>
    /// <summary>OS calls refused over every run of the process (the test reports it, so a run that injected none
    /// shows).</summary>
    public static long Refusals;

    public void Finish()
    {
        if (_disposed) return;
        if (_os != null)
            Interlocked.Add(ref Refusals, _os.Refused(OsCall.Protect) + _os.Refused(OsCall.DontNeed) + _os.Refused(OsCall.NoHugePage) + _os.Refused(OsCall.HugePage));
        _os?.Allow();
        _osRefusing = false;
        foreach (ModelRent r in _rents.ToArray()) Return(new Op(OpKind.Return, 0, _rents.IndexOf(r)));
        foreach (ModelBlock b in _blocks)
        {
            foreach ((BlockPin p, nint _) in b.Pins) p.Dispose();
            foreach (BlockPin p in b.LongTermPins) p.Dispose();
            b.Pins.Clear();
            b.LongTermPins.Clear();
        }
        CheckEverything("releasing every pin");
        if (!_shared) { Validate(); CheckCounts(); }
        // Correct code never writes freed memory: with PoisonFreedMemory on, nothing may be reported.
        if (Heap.GetStatistics().UseAfterFreeDetections is var detections and not 0) Fail($"{detections} use-after-free report(s) on correct code");
        foreach (ModelBlock b in _blocks.ToArray()) { Heap.Free(b.Handle); Forget(b); }
        if (_shared) return;
        CheckCounts();
        Heap.Dispose();
        _disposed = true;
    }

    /// <summary>Best effort after a failure: every pin released and every buffer returned, so the heap can go (a run
    /// of its own disposes it; a shared heap is its caller's).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        foreach (ModelRent r in _rents) try { r.Owner.Dispose(); } catch (InvalidOperationException) { }
        foreach (ModelBlock b in _blocks)
        {
            foreach ((BlockPin p, nint _) in b.Pins) p.Dispose();
            foreach (BlockPin p in b.LongTermPins) p.Dispose();
        }
        _rents.Clear();
        _blocks.ForEach(b => { b.Pins.Clear(); b.LongTermPins.Clear(); });
        if (_shared) return;
        try { Heap.Dispose(); } catch (InvalidOperationException) { }
        _disposed = true;
    }
}

/// <summary>The heap did something the model says it must not.</summary>
internal sealed class ModelViolationException(string message) : Exception(message);
