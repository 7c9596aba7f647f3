"""Small line charts as inline SVG for the run report (no scripts, no fonts, nothing fetched)."""

from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return [round(start + i * step, 10) for i in range(int(round((end - start) / step)) + 1)]


def _tick_label(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def svg_line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, title: str, xlabel: str, ylabel: str,
                   x_labels: dict[float, str] | None = None, width: int = 560, height: int = 300) -> str:
    """A small line chart as inline SVG (points marked when there are few)."""
    pts = [(x, y) for _, s in series for x, y in s if y is not None and math.isfinite(y)]
    if not pts:
        return ""
    left, right, top, bottom = 60, 30, 34, 46
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt = sorted(x_labels) if x_labels else _nice_ticks(min(xs), max(xs))
    yt = _nice_ticks(min(ys), max(ys))
    x0, x1 = min(xt[0], min(xs)), max(xt[-1], max(xs))
    y0, y1 = yt[0], yt[-1]
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def X(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def Y(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    e = html.escape
    parts = [f'<svg class="chart" role="img" aria-label="{e(title)}"'
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{e(title)}</text>']
    for v in yt:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" class="tick">{_tick_label(v)}</text>')
    for v in xt:
        label = x_labels.get(v, "") if x_labels else _tick_label(v)
        parts.append(f'<text x="{X(v):.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tick">{e(label)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" class="axis"/>'
                 f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" class="axis"/>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" class="lab">{e(xlabel)}</text>'
                 f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" class="lab" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{e(ylabel)}</text>')
    for i, (name, s) in enumerate(series):
        s = [(x, y) for x, y in s if y is not None and math.isfinite(y)]
        if not s:
            continue
        color = PALETTE[i % len(PALETTE)]
        if len(s) > 1:
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s)
            parts.append(f'<polyline class="series" data-name="{e(name)}" fill="none" stroke="{color}" stroke-width="2" points="{d}"/>')
        if len(s) <= 30:
            parts += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{color}"><title>{e(name)}: {y:.4g}</title></circle>'
                      for x, y in s]
        ly = top + 4 + 16 * i
        parts.append(f'<rect x="{width - right - 150}" y="{ly}" width="12" height="3" fill="{color}"/>'
                     f'<text x="{width - right - 133}" y="{ly + 5}" class="leg">{e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _in_sequence(phases: dict[str, list[tuple[float, float]]]) -> list[tuple[str, list[tuple[float, float]]]]:
    """Sub-steps of a stage (align: monolingual, then bilingual) each count steps from the start; draw
    them one after another on a shared axis."""
    out, offset = [], 0.0
    for name, pts in phases.items():
        pts = sorted(pts)
        out.append((name, [(x + offset, y) for x, y in pts]))
        offset += max(x for x, _ in pts)
    return out


def _downsample(points: list[tuple[float, float]], limit: int = 400) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)] + [points[-1]]
