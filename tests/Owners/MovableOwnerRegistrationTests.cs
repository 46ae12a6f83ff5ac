using System.Globalization;
using Compaction.Allocator;
using Xunit.Abstractions;

namespace Compaction.Tests;

/// <summary>Registering and unregistering a block's movable owner: whatever the interleaving, the block ends up with
/// the owner the last call named, or with none, and moves either way.</summary>
public sealed class MovableOwnerRegistrationTests(ITestOutputHelper output)
{
    private sealed class CountingOwner : IMovableBlockOwner
    {
        public int Isolations, Migrations, Putbacks;
        public bool Isolate(BlockHandle handle) { Isolations++; return true; }
        public OwnerMigrateResult Migrate(BlockHandle handle, nint oldAddress, nint newAddress) { Migrations++; return OwnerMigrateResult.Success; }
        public void Putback(BlockHandle handle) => Putbacks++;
    }

    [Fact]
    public void ABlockWhoseOwnerIsSetAndClearedAtOnceOnTwoThreadsStaysMovable()
    {
        int seed = Environment.GetEnvironmentVariable("STRESS_SEED") is string s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed} (rerun with STRESS_SEED={seed})");
        using var heap = new NativeHeap(new HeapOptions
        {
            ArenaBytes = 8L << 20, PageblockPages = 64, MovableZonePercent = 100, DirectCompaction = false, PerThreadCaches = false,
        });
        BlockHandle h = heap.Allocate(100);
        TestHeaps.Fill(heap, h);
        var owner = new CountingOwner();
        const int Rounds = 200_000;
        int go = -1, done = -1, stop = 0;
        // The other thread clears the owner while this one sets it; both start a round at the same spin, the other
        // after a seeded delay of 0-63 spins so that every offset of the two calls is tried.
        var clearer = new Thread(() =>
        {
            var rng = new Random(seed);
            for (int round = 0; round < Rounds; round++)
            {
                while (Volatile.Read(ref go) < round) if (Volatile.Read(ref stop) != 0) return;
                Thread.SpinWait(rng.Next(64));
                heap.SetMovableOwner(h, null);
                Volatile.Write(ref done, round);
            }
        })
        { IsBackground = true };
        clearer.Start();
        int withOwner = 0, withoutOwner = 0, stuck = -1;
        MigrateResult stuckResult = MigrateResult.Success;
        try
        {
            for (int round = 0; round < Rounds; round++)
            {
                Volatile.Write(ref go, round);
                heap.SetMovableOwner(h, owner);
                while (Volatile.Read(ref done) < round) { }
                // Either call may have come last: the block has the owner (which is asked and agrees) or none.
                int isolations = owner.Isolations;
                MigrateResult result = heap.Migrate(h);
                if (result != MigrateResult.Success) { stuck = round; stuckResult = result; break; }
                if (owner.Isolations > isolations) withOwner++; else withoutOwner++;
            }
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            clearer.Join();
        }
        output.WriteLine($"rounds ending with the owner {withOwner}, without {withoutOwner}; first stuck round {stuck}");
        Assert.True(stuck < 0, $"round {stuck}: the block could not be migrated ({stuckResult}) after the race; it is flagged as owned with no owner registered");
        Assert.Equal(owner.Isolations, owner.Migrations + owner.Putbacks);
        Assert.Equal(0, TestHeaps.CountCorrupt(heap, h));
        heap.Free(h);
        TestHeaps.AssertValid(heap);
    }
}
