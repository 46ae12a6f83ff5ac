using System.Diagnostics;
using Compaction.Allocator.Layout;

namespace Compaction.Allocator.Pages;

// The kernel's anti-fragmentation rules: fallback to the other migrate type, and pageblock claiming.
internal sealed unsafe partial class Zone
{
    /// <summary>
    /// __rmqueue_fallback: take the largest block of the other migrate type, so that types mix as little as possible.
    /// A whole pageblock (or more) changes type outright. A smaller block claims its pageblock when the request is
    /// large (at least half a pageblock order) or unmovable, and at least half of the pageblock is free or already of
    /// the wanted type; otherwise only the block itself is stolen and the pageblock keeps its type. The pages the
    /// allocation will use (<paramref name="count"/> from the block's head) are committed first: a commit the memory
    /// limit or the OS refuses returns -1 with the lists and every pageblock's type as they were. Retyping first and
    /// freeing the pages back after the refusal left the pageblocks of the other type, so under a limit each refused
    /// attempt flipped whole pageblocks between the types and mixed them for nothing.
    /// </summary>
    private int RemoveFallbackLocked(int order, MigrateType type, int count)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        MigrateType other = type == MigrateType.Movable ? MigrateType.Unmovable : MigrateType.Movable;
        for (int o = _maxOrder; o >= order; o--)
        {
            int head = _freeHeads[o * MigrateTypes + (int)other];
            // The frontier's blocks are max-order blocks of the zone's type (rule 3 in AllocatePagesLocked).
            if (head < 0 && o == _maxOrder && other == InitialType && ExtendFrontierLocked()) head = _freeHeads[o * MigrateTypes + (int)other];
            if (head < 0) continue;
            if (!CommitRangeLocked(head, count)) return -1;
            bool purged = _map.Page(head).FreePurged;
            RemoveFreeBlockLocked(head, o, other);
            _map.Page(head).Kind = PageKind.FreeTail; // off the lists: the claim below must not move it
            MigrateType listType = other;
            if (o >= _map.PageblockOrder)
            {
                for (int pb = _map.PageblockOf(head); pb <= _map.PageblockOf(head + (1 << o) - 1); pb++)
                    _map.SetMigrateType(pb, type);
                listType = type;
            }
            else if ((order >= _map.PageblockOrder / 2 || type == MigrateType.Unmovable) && TryClaimPageblockLocked(_map.PageblockOf(head), type, head, o))
            {
                listType = type;
            }
            ExpandLocked(head, order, o, listType, purged);
            Stats.PageblockFallbacks++;
            return head;
        }
        return -1;
    }

    /// <summary>
    /// Claims pageblock <paramref name="pb"/> for <paramref name="type"/> when free plus compatible pages make at least
    /// half of it, moving its free blocks to the new type's lists (move_freepages_block). The block being stolen,
    /// <paramref name="stolen"/> of <paramref name="stolenOrder"/>, is already off the lists and counts as compatible.
    /// </summary>
    private bool TryClaimPageblockLocked(int pb, MigrateType type, int stolen, int stolenOrder)
    {
        Debug.Assert(Lock.IsHeldByCurrentThread, "caller holds the zone lock");
        int first = pb << _map.PageblockOrder, end = first + _map.PageblockPages;
        int free = 0, compatible = 0;
        for (int p = first; p < end;)
        {
            if (p == stolen) { compatible += 1 << stolenOrder; p += 1 << stolenOrder; continue; }
            ref PageDescriptor d = ref _map.Page(p);
            if (d.Kind == PageKind.FreeHead) { free += 1 << d.Order; p += 1 << d.Order; continue; }
            if (d.Kind != PageKind.FreeTail && d.AllocType == type) compatible++;
            p++;
        }
        if (free + compatible < _map.PageblockPages / 2) return false;
        MigrateType old = _map.GetMigrateType(pb);
        _map.SetMigrateType(pb, type);
        for (int p = first; p < end;)
        {
            if (p == stolen) { p += 1 << stolenOrder; continue; }
            ref PageDescriptor d = ref _map.Page(p);
            if (d.Kind == PageKind.FreeHead)
            {
                int o = d.Order;
                bool purged = d.FreePurged;   // moving between lists leaves the pages as they are
                RemoveFreeBlockLocked(p, o, old);
                AddFreeBlockLocked(p, o, type);
                if (purged) MarkPurgedLocked(p);
                p += 1 << o;
                continue;
            }
            p++;
        }
        Stats.PageblocksClaimed++;
        return true;
    }
}
