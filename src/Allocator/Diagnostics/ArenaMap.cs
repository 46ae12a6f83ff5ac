using System.Globalization;
using System.Net;
using System.Text;

namespace Compaction.Allocator.Diagnostics;

/// <summary>One pageblock of an <see cref="ArenaMap"/>.</summary>
/// <param name="Index">The pageblock's index in the arena.</param>
/// <param name="Zone">"Normal" or "Movable".</param>
/// <param name="Type">Its migrate type.</param>
/// <param name="Committed">False when never committed or decommitted (no memory behind it).</param>
/// <param name="UsedPages">Pages holding blocks: a run's pages, and a slab's pages in proportion to its used slots.</param>
/// <param name="PinnedPages">Pages of pinned movable blocks (runs and slabs with a pin count): what holds compaction back.</param>
/// <param name="Pages">Pages per pageblock.</param>
/// <param name="PinnedUnmovablePages">Pages of pinned unmovable blocks (long-term pins live there: they hold nothing
/// back).</param>
public sealed record PageblockView(int Index, string Zone, MigrateType Type, bool Committed, double UsedPages, int PinnedPages, int Pages,
                                   int PinnedUnmovablePages = 0)
{
    /// <summary>Share of the pageblock in use, 0 to 1.</summary>
    public double Occupancy => UsedPages / Pages;
}

/// <summary>
/// A picture of the arena: one cell per pageblock below the zones' frontiers, coloured by migrate type (movable blue,
/// unmovable orange), its shade the pageblock's occupancy (white when free), grey when it has no memory behind it,
/// a red frame when a movable block in it is pinned (it holds compaction back), a purple one for a pinned unmovable
/// block (where long-term pins live). <see cref="PageSvg"/> zooms into a few pageblocks, one cell per page. <see cref="Svg(ArenaMap, ArenaMap?, int)"/> draws one map, or two side
/// by side (before and after a compaction). From <see cref="NativeHeap.GetArenaMap"/>: a racy walk of the page
/// descriptors (each pageblock is read under its zone's lock, the arena is not stopped), so it shows the arena as it
/// was during the walk.
/// </summary>
public sealed class ArenaMap(IReadOnlyList<PageblockView> pageblocks, string title)
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The pageblocks, in address order.</summary>
    public IReadOnlyList<PageblockView> Pageblocks { get; } = pageblocks;

    /// <summary>What the picture is captioned with.</summary>
    public string Title { get; } = title;

    /// <summary>The fill colour of a cell: grey without memory; else white towards full blue (movable) or orange
    /// (unmovable) with the occupancy.</summary>
    public static string FillOf(PageblockView pb)
    {
        if (!pb.Committed) return "#d9d9d9";
        (int r, int g, int b) = pb.Type == MigrateType.Movable ? (31, 119, 180) : (255, 127, 14);
        double o = Math.Clamp(pb.Occupancy, 0, 1);
        int Mix(int c) => (int)Math.Round(255 - (255 - c) * o);
        return string.Create(Inv, $"#{Mix(r):x2}{Mix(g):x2}{Mix(b):x2}");
    }

    /// <summary>An SVG of <paramref name="first"/>, and of <paramref name="second"/> beside it when given, with
    /// <paramref name="columns"/> cells per row and a legend.</summary>
    public static string Svg(ArenaMap first, ArenaMap? second = null, int columns = 32)
    {
        const int cell = 14, gap = 40, top = 40, legend = 70;
        int rows = Math.Max(1, (Math.Max(first.Pageblocks.Count, second?.Pageblocks.Count ?? 0) + columns - 1) / columns);
        int panel = columns * cell;
        int width = 20 + panel + (second != null ? gap + panel : 0) + 20, height = top + rows * cell + legend;
        var sb = new StringBuilder();
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append(Inv, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        Panel(sb, first, 20, top, columns, cell);
        if (second != null) Panel(sb, second, 20 + panel + gap, top, columns, cell);
        int ly = top + rows * cell + 24;
        (string label, string fill, string stroke)[] keys =
        [
            ("movable, full", "#1f77b4", "none"), ("unmovable, full", "#ff7f0e", "none"), ("free (committed)", "#ffffff", "#999999"),
            ("no memory behind it", "#d9d9d9", "none"), ("a pinned movable block", "#ffffff", "#d62728"),
            ("a pinned unmovable block (long-term pins)", "#ffffff", "#9467bd"),
        ];
        int x = 20;
        foreach ((string label, string fill, string stroke) in keys)
        {
            sb.Append(Inv, $"<rect x=\"{x}\" y=\"{ly - 10}\" width=\"{cell - 2}\" height=\"{cell - 2}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"/>");
            sb.Append(Inv, $"<text x=\"{x + cell + 4}\" y=\"{ly}\">{WebUtility.HtmlEncode(label)}</text>\n");
            x += cell + 12 + label.Length * 7;
        }
        sb.Append(Inv, $"<text x=\"20\" y=\"{ly + 22}\" fill=\"#555\">one cell per pageblock; shade = share in use</text>\n");
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static void Panel(StringBuilder sb, ArenaMap map, int x0, int y0, int columns, int cell)
    {
        sb.Append(Inv, $"<text x=\"{x0}\" y=\"{y0 - 14}\" font-weight=\"bold\">{WebUtility.HtmlEncode(map.Title)}</text>\n");
        for (int i = 0; i < map.Pageblocks.Count; i++)
        {
            PageblockView pb = map.Pageblocks[i];
            int x = x0 + i % columns * cell, y = y0 + i / columns * cell;
            string stroke = pb.PinnedPages > 0 ? "#d62728" : pb.PinnedUnmovablePages > 0 ? "#9467bd" : pb.Committed && pb.Occupancy == 0 ? "#999999" : "none";
            int width = pb.PinnedPages + pb.PinnedUnmovablePages > 0 ? 2 : 1;
            sb.Append(Inv, $"<rect class=\"pb\" data-pb=\"{pb.Index}\" x=\"{x}\" y=\"{y}\" width=\"{cell - 2}\" height=\"{cell - 2}\" fill=\"{FillOf(pb)}\" stroke=\"{stroke}\" stroke-width=\"{width}\">");
            sb.Append(Inv, $"<title>pageblock {pb.Index} ({pb.Zone}, {pb.Type}): {pb.Occupancy:P0} used{(pb.PinnedPages > 0 ? $", {pb.PinnedPages} pinned page(s)" : "")}{(pb.Committed ? "" : ", no memory")}</title></rect>\n");
        }
    }

    /// <summary>One cell per page of <paramref name="pages"/> (from <see cref="NativeHeap.GetPageMap"/>), a row per
    /// pageblock: free pages white, run pages in the type's colour, slab pages shaded by their slab's occupancy,
    /// pinned pages framed as in the pageblock picture.</summary>
    public static string PageSvg(IReadOnlyList<PageView> pages, int pagesPerRow, string title)
    {
        const int cell = 8, top = 40;
        int rows = Math.Max(1, (pages.Count + pagesPerRow - 1) / pagesPerRow);
        int width = 40 + pagesPerRow * cell, height = top + rows * cell + 30;
        var sb = new StringBuilder();
        sb.Append(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append(Inv, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        sb.Append(Inv, $"<text x=\"20\" y=\"24\" font-weight=\"bold\">{WebUtility.HtmlEncode(title)}</text>\n");
        for (int i = 0; i < pages.Count; i++)
        {
            PageView p = pages[i];
            var asBlock = new PageblockView(0, "", p.Type, p.Committed, p.Occupancy, 0, 1);
            string fill = p.Kind == "free" && p.Committed ? "#ffffff" : FillOf(asBlock);
            string stroke = p.Pinned ? (p.Type == MigrateType.Movable && p.MovableBlock ? "#d62728" : "#9467bd") : "none";
            sb.Append(Inv, $"<rect class=\"page\" data-page=\"{p.Page}\" x=\"{20 + i % pagesPerRow * cell}\" y=\"{top + i / pagesPerRow * cell}\" width=\"{cell - 1}\" height=\"{cell - 1}\" fill=\"{fill}\" stroke=\"{stroke}\"><title>page {p.Page}: {p.Kind}{(p.Pinned ? ", pinned" : "")}</title></rect>\n");
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }
}

/// <summary>One page of <see cref="NativeHeap.GetPageMap"/>.</summary>
/// <param name="Page">The page's index in the arena.</param>
/// <param name="Kind">"free", "run" or "slab".</param>
/// <param name="Type">Its pageblock's migrate type.</param>
/// <param name="Committed">False when its pageblock has no memory behind it.</param>
/// <param name="Occupancy">1 for a run's page, the slab's used share for a slab's, 0 when free.</param>
/// <param name="Pinned">The block (or a block of the slab) on this page is pinned.</param>
/// <param name="MovableBlock">The run or slab holds movable blocks.</param>
public sealed record PageView(int Page, string Kind, MigrateType Type, bool Committed, double Occupancy, bool Pinned, bool MovableBlock);
