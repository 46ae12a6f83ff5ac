using System.Globalization;
using System.Net;
using System.Text;

namespace Compaction.Bench;

/// <summary>
/// A line chart written as plain SVG text: one polyline per series, axes with "nice" ticks (1, 2 or 5 times a power of
/// ten), a legend, dashed vertical markers with labels (phase boundaries) and dotted horizontal reference lines.
/// Points above <see cref="YMax"/> are drawn on the top edge. No package: the chart is a few dozen elements.
/// </summary>
internal sealed class SvgPlot(string title, string xLabel, string yLabel)
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly string[] s_palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

    private readonly List<(string Name, IReadOnlyList<(double X, double Y)> Points)> _series = [];
    private readonly List<(double X, string Label)> _markers = [];
    private readonly List<(double Y, string Label)> _references = [];

    /// <summary>Upper end of the y axis; null = the largest y of any series.</summary>
    public double? YMax { get; set; }

    public void AddSeries(string name, IReadOnlyList<(double X, double Y)> points) => _series.Add((name, points));
    public void AddMarker(double x, string label) => _markers.Add((x, label));
    public void AddReference(double y, string label) => _references.Add((y, label));

    public string Render(int width = 960, int height = 540)
    {
        const int left = 64, right = 190, top = 40, bottom = 56;
        int plotW = width - left - right, plotH = height - top - bottom;
        double xMax = Math.Max(1e-9, _series.SelectMany(s => s.Points).Select(p => p.X).DefaultIfEmpty(1).Max());
        xMax = Math.Max(xMax, _markers.Select(m => m.X).DefaultIfEmpty(0).Max());
        double yMax = YMax ?? _series.SelectMany(s => s.Points).Select(p => p.Y).DefaultIfEmpty(1).Max();
        double xStep = NiceStep(xMax), yStep = NiceStep(yMax);
        xMax = Math.Ceiling(xMax / xStep - 1e-9) * xStep;
        yMax = Math.Ceiling(yMax / yStep - 1e-9) * yStep;
        string X(double x) => (left + x / xMax * plotW).ToString("F1", Inv);
        string Y(double y) => (top + plotH - Math.Min(y, yMax) / yMax * plotH).ToString("F1", Inv);

        var sb = new StringBuilder();
        sb.AppendLine(Inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine(Inv, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        sb.AppendLine(Inv, $"<text x=\"{width / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{Esc(title)}</text>");

        // Grid and ticks.
        for (double x = 0; x <= xMax + xStep / 2; x += xStep)
        {
            sb.AppendLine(Inv, $"<line x1=\"{X(x)}\" y1=\"{top}\" x2=\"{X(x)}\" y2=\"{top + plotH}\" stroke=\"#eee\"/>");
            sb.AppendLine(Inv, $"<text x=\"{X(x)}\" y=\"{top + plotH + 16}\" text-anchor=\"middle\">{Tick(x, xStep)}</text>");
        }
        for (double y = 0; y <= yMax + yStep / 2; y += yStep)
        {
            sb.AppendLine(Inv, $"<line x1=\"{left}\" y1=\"{Y(y)}\" x2=\"{left + plotW}\" y2=\"{Y(y)}\" stroke=\"#eee\"/>");
            sb.AppendLine(Inv, $"<text x=\"{left - 6}\" y=\"{Y(y)}\" text-anchor=\"end\" dominant-baseline=\"middle\">{Tick(y, yStep)}</text>");
        }
        sb.AppendLine(Inv, $"<rect x=\"{left}\" y=\"{top}\" width=\"{plotW}\" height=\"{plotH}\" fill=\"none\" stroke=\"#444\"/>");
        sb.AppendLine(Inv, $"<text x=\"{left + plotW / 2}\" y=\"{height - 14}\" text-anchor=\"middle\">{Esc(xLabel)}</text>");
        sb.AppendLine(Inv, $"<text x=\"16\" y=\"{top + plotH / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {top + plotH / 2})\">{Esc(yLabel)}</text>");

        foreach ((double y, string label) in _references)
        {
            sb.AppendLine(Inv, $"<line x1=\"{left}\" y1=\"{Y(y)}\" x2=\"{left + plotW}\" y2=\"{Y(y)}\" stroke=\"#999\" stroke-dasharray=\"2,3\"/>");
            sb.AppendLine(Inv, $"<text x=\"{left + plotW - 4}\" y=\"{Y(y)}\" dy=\"-3\" text-anchor=\"end\" fill=\"#666\" font-size=\"10\">{Esc(label)}</text>");
        }
        for (int i = 0; i < _markers.Count; i++)
        {
            (double x, string label) = _markers[i];
            sb.AppendLine(Inv, $"<line x1=\"{X(x)}\" y1=\"{top}\" x2=\"{X(x)}\" y2=\"{top + plotH}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>");
            // Labels run down the marker, staggered so that close markers do not overprint each other.
            int ly = top + 6 + (i % 3) * 4;
            sb.AppendLine(Inv, $"<text x=\"{X(x)}\" y=\"{ly}\" dx=\"3\" font-size=\"10\" fill=\"#555\" transform=\"rotate(90 {X(x)} {ly})\">{Esc(label)}</text>");
        }

        for (int i = 0; i < _series.Count; i++)
        {
            (string name, IReadOnlyList<(double X, double Y)> points) = _series[i];
            string color = s_palette[i % s_palette.Length];
            if (points.Count > 0)
            {
                sb.Append(Inv, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\" points=\"");
                foreach ((double x, double y) in points) sb.Append(X(x)).Append(',').Append(Y(y)).Append(' ');
                sb.AppendLine("\"/>");
            }
            int ly = top + 10 + i * 20;
            sb.AppendLine(Inv, $"<line x1=\"{left + plotW + 14}\" y1=\"{ly}\" x2=\"{left + plotW + 38}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/>");
            sb.AppendLine(Inv, $"<text x=\"{left + plotW + 44}\" y=\"{ly}\" dominant-baseline=\"middle\">{Esc(name)}</text>");
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    /// <summary>A tick spacing of 1, 2 or 5 times a power of ten giving 4 to 10 ticks over [0, max].</summary>
    private static double NiceStep(double max)
    {
        if (max <= 0 || double.IsNaN(max) || double.IsInfinity(max)) return 1;
        double raw = max / 6, power = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double m = raw / power;
        return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * power;
    }

    private static string Tick(double v, double step) => v.ToString(step >= 1 ? "F0" : step >= 0.1 ? "F1" : "F2", Inv);

    private static string Esc(string s) => WebUtility.HtmlEncode(s);
}
