namespace Compaction.Bench.Micro;

/// <summary>Marks a benchmark that needs a peer allocator: it is left out of the run (with a printed message) when
/// <see cref="Peers.IsAvailable"/> says that peer cannot be loaded.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class PeerAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}
