"""Matplotlib figures as inline SVG for report.html: the same data gives the same bytes, nothing is fetched.

matplotlib is imported here, lazily (``new_figure``), so ``import edgekit`` stays fast. Figures are drawn on an Agg
canvas, never through pyplot, so a report leaves the caller's matplotlib state (backend, rcParams) as it was.
"""

from __future__ import annotations

import io
import math
import re
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATUS_COLORS = {"passed": "#2e7d32", "failed": "#c62828", "unavailable": "#757575", "error": "#6a1b9a",
                 "reference": "#1565c0", "not validated": "#9e9e9e"}

# Text stays text (searchable, selectable, small); ids are derived from a fixed salt instead of a random one.
_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
          "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e0e0e0",
          "grid.linewidth": 0.6, "axes.axisbelow": True}


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, "#424242")


def finite(value: Any) -> bool:
    """A real number that can be plotted (bools and None are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_figure(width: float, height: float) -> "Figure":
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas (pyplot is not involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style() -> Any:
    """The rc settings every report figure is drawn under (a context manager)."""
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def to_svg(fig: "Figure", key: str, title: str) -> str:
    """``fig`` as an ``<svg>`` element to inline: no XML prolog or metadata, every id prefixed with ``key`` (each
    figure of a page has its own key), ``role="img"`` with ``title`` as its accessible name and tooltip."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": f"edgekit-{key}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    # matplotlib numbers its groups per figure (figure_1, axes_1, ...): prefix every id, and each reference to one,
    # so the figures of one page never share an id
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", key)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r'(href="#|url\(#)([^")]+)', rf"\1{prefix}-\2", svg)
    label = escape(title, quote=True)
    svg = svg.replace("<svg ", f'<svg class="plot" data-plot="{escape(key, quote=True)}" role="img" aria-label="{label}" ', 1)
    head_end = svg.index(">") + 1
    return svg[:head_end] + f"\n <title>{label}</title>" + svg[head_end:].rstrip() + "\n"


def short(text: str, limit: int = 46) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis in the middle (layer names keep both ends)."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[-(limit - 1 - half):]


# Where a marker's label may go, tried in order: (dx, dy) in points from the marker, and the text's alignment.
_LABEL_SPOTS = tuple((dx, dy, "left" if dx > 0 else "right") for dy in (4, -11, 14, -21, 24, -31, 34, -41) for dx in (6, -6))


def place_labels(ax: Any, items: list[tuple[str, float, float]], fontsize: float = 8) -> None:
    """Annotate each (text, x, y) beside its marker, at the first spot inside the axes where it overlaps no earlier
    label and no marker (estimated text extents; call it last, once limits and legend are set: the layout is
    settled first). Crowded plots still get every label."""
    fig = ax.figure
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)  # the axes' final place, so markers' pixel distances are the drawn ones
    to_px = ax.transData.transform
    scale = fig.dpi / 72.0
    char_w, text_h = 0.62 * fontsize * scale, 1.25 * fontsize * scale
    frame = ax.bbox
    markers = [to_px((x, y)) for _, x, y in items]
    taken: list[tuple[float, float, float, float]] = [(mx - 4 * scale, my - 4 * scale, mx + 4 * scale, my + 4 * scale)
                                                      for mx, my in markers]

    def box(mx: float, my: float, dx: float, dy: float, align: str, text: str) -> tuple[float, float, float, float]:
        w = char_w * len(text)
        x0 = mx + dx * scale - (w if align == "right" else 0.0)
        y0 = my + dy * scale
        return (x0, y0, x0 + w, y0 + text_h)

    def free(b: tuple[float, float, float, float]) -> bool:
        inside = frame.x0 <= b[0] and b[2] <= frame.x1 and frame.y0 <= b[1] and b[3] <= frame.y1
        return inside and all(b[2] <= o[0] or o[2] <= b[0] or b[3] <= o[1] or o[3] <= b[1] for o in taken)

    for (text, x, y), (mx, my) in zip(items, markers):
        spot = next((s for s in _LABEL_SPOTS if free(box(mx, my, *s, text))), _LABEL_SPOTS[0])
        taken.append(box(mx, my, *spot, text))
        far = abs(spot[1]) > 11  # beyond the first ring: a leader line says which marker the label names
        label = ax.annotate(text, (x, y), xytext=spot[:2], textcoords="offset points", ha=spot[2], fontsize=fontsize,
                            color="#212121", arrowprops={"arrowstyle": "-", "color": "#9e9e9e", "lw": 0.6} if far else None)
        label.set_in_layout(False)  # placed inside the axes: the settled layout stays as it is


def log_ticks(axis: Any, low: float, high: float) -> None:
    """A log axis from ``low`` to ``high`` ticked at 1, 2 and 5 of each decade (at each decade when it spans more
    than two), written plainly (0.05, 0.1, 0.2, ... ms)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    decades = math.log10(high / low) if low > 0 and high > 0 else 0.0
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2.0 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    if decades > 2.0:
        axis.set_minor_locator(NullLocator())  # a tick per decade is enough; minor ticks only cost drawing time
