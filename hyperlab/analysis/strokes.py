"""Pen offsets drawn as handwriting: SVG (one path per stroke) and PNG (matplotlib), optionally coloured
point by point (the hyper cell's activity as the line was written). Needs neither torch nor Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_strokes(points: np.ndarray, scale: float = 1.0) -> list[np.ndarray]:
    """Offsets (T, 3) ``(dx, dy, end_of_stroke)`` -> absolute pen positions, one (n, 2) array per stroke
    (y down, as the tablet records it). A stroke ends at a point whose end-of-stroke bit is set."""
    points = np.asarray(points, dtype=np.float64)
    xy = np.cumsum(points[:, :2] * scale, axis=0)
    ends = np.flatnonzero(points[:, 2] > 0.5)
    return [s for s in np.split(xy, ends + 1) if len(s)]


def strokes_svg(points: np.ndarray, scale: float = 1.0, stroke_width: float = 2.0, margin: float = 10.0) -> str:
    """The handwriting as an SVG document: one ``<path>`` per stroke, fitted to its bounding box."""
    strokes = to_strokes(points, scale)
    xy = np.concatenate(strokes)
    low = xy.min(axis=0) - margin
    width, height = xy.max(axis=0) + margin - low
    paths = []
    for stroke in strokes:
        shifted = stroke - low
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in shifted)
        paths.append(f'<path d="{d}" fill="none" stroke="black" stroke-width="{stroke_width}" '
                     'stroke-linecap="round" stroke-linejoin="round"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.1f} {height:.1f}">' + "".join(paths) + "</svg>")


def strokes_png(points: np.ndarray, path: str | Path, scale: float = 1.0, colour: np.ndarray | None = None,
                title: str = "", colour_label: str = "") -> Path:
    """The handwriting as a PNG; ``colour`` (T,) colours each segment by a value (e.g. the hyper cell's
    weight change as that point was written), with a colour bar named ``colour_label``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    points = np.asarray(points, dtype=np.float64)
    xy, segments, pen_down = _segments(points, scale)
    fig, ax = plt.subplots(figsize=(max(4.0, np.ptp(xy[:, 0]) / max(np.ptp(xy[:, 1]), 1e-9) * 1.5), 2.0))
    lines = LineCollection(segments, linewidths=1.5, colors="black" if colour is None else None, cmap="viridis")
    if colour is not None:
        lines.set_array(np.asarray(colour, dtype=np.float64)[:-1][pen_down])
        fig.colorbar(lines, ax=ax, label=colour_label)
    ax.add_collection(lines)
    ax.autoscale()
    ax.set_aspect("equal")
    ax.invert_yaxis()                                     # the tablet's y grows downwards
    ax.axis("off")
    ax.set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _segments(points: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pen positions (T, 2), the drawn segments (S, 2, 2) and which of the T-1 steps they are (pen down:
    no segment from a stroke's end to the next stroke's start)."""
    xy = np.cumsum(points[:, :2] * scale, axis=0)
    pen_down = points[:-1, 2] < 0.5
    return xy, np.stack([xy[:-1], xy[1:]], axis=1)[pen_down], pen_down


GATES = ("input", "candidate", "forget", "output")  # the order of d_h's four bands (i, g, f, o)


def weight_change(d_h: np.ndarray) -> np.ndarray:
    """The hyper cell's weight-change activity as a line was written: (T, 4, H) scaling vectors ``d_h`` of
    the four gates -> (T, 4), the norm of each gate's step-to-step change (the first step's is 0), as
    ``hyperlab sample`` measures it for char models."""
    d_h = np.asarray(d_h, dtype=np.float64)
    change = np.zeros(d_h.shape[:2])
    change[1:] = np.linalg.norm(np.diff(d_h, axis=0), axis=-1)
    return change


def activity_png(points: np.ndarray, change: np.ndarray, path: str | Path) -> Path:
    """The seed's picture: the handwriting four times, each segment coloured by one gate's weight change
    as it was written (``weight_change``), above the four bands of that activity along the line. Colours
    top out at the 99th percentile (a few large steps, such as the first from the zero state, would
    otherwise leave the rest of the line dark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    points, change = np.asarray(points, dtype=np.float64), np.asarray(change, dtype=np.float64)
    xy, segments, pen_down = _segments(points)
    aspect = np.ptp(xy[:, 0]) / max(np.ptp(xy[:, 1]), 1e-9)
    fig, axes = plt.subplots(5, 1, figsize=(min(max(6.0, aspect * 1.6), 24.0), 9.0),
                             gridspec_kw={"height_ratios": [1, 1, 1, 1, 0.8]})
    for ax, gate, values in zip(axes, GATES, change.T):
        lines = LineCollection(segments, linewidths=1.5, cmap="viridis")
        lines.set_array(values[1:][pen_down])  # a segment is coloured by the step that drew its end
        lines.set_clim(0.0, _top(values))
        ax.add_collection(lines)
        ax.autoscale()
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.axis("off")
        ax.set_title(f"{gate} gate: change of d_h per step", fontsize=9, loc="left")
        fig.colorbar(lines, ax=ax, fraction=0.02, extend="max")
    bands = axes[-1]
    image = bands.imshow(change.T, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=_top(change))
    bands.set_yticks(range(4), GATES)
    bands.set_xlabel("pen point")
    fig.colorbar(image, ax=bands, fraction=0.02, extend="max")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _top(values: np.ndarray) -> float:
    """The top of a colour scale: the 99th percentile, or 1 where everything is 0."""
    top = float(np.percentile(values, 99))
    return top if top > 0 else 1.0


def animation_html(points: np.ndarray, change: np.ndarray | None = None, ms_per_point: int = 15) -> str:
    """A self-contained HTML page (no network) that draws the handwriting point by point, each segment
    coloured by the hyper cell's total weight change at that step (blue: calm, yellow: changing fast;
    black without a hyper cell), with a replay button."""
    import json

    points = np.asarray(points, dtype=np.float64)
    xy = np.cumsum(points[:, :2], axis=0)
    low, high = xy.min(axis=0) - 10, xy.max(axis=0) + 10
    total = None if change is None else np.asarray(change, dtype=np.float64).sum(axis=1)
    if total is not None:
        total = np.clip(total / _top(total), 0.0, 1.0)
    data = {"xy": np.round(xy - low, 2).tolist(), "end": (points[:, 2] > 0.5).astype(int).tolist(),
            "level": None if total is None else np.round(total, 3).tolist(), "ms": int(ms_per_point)}
    width, height = high - low
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hyperlab handwriting</title>
<style>body{{font-family:sans-serif;margin:1em}} svg{{border:1px solid #ddd;max-width:100%;height:auto}}</style>
</head><body>
<p>Generated handwriting, drawn point by point; colour: the hyper cell's weight change at each step
(blue calm, yellow fast). <button id="replay">replay</button> <span id="count"></span></p>
<svg id="ink" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.1f} {height:.1f}"
 width="{width:.0f}" height="{height:.0f}"></svg>
<script>
const D = {json.dumps(data)};
const svg = document.getElementById("ink"), count = document.getElementById("count");
function colour(v) {{ if (v === null) return "black"; return `hsl(${{240 - 180 * v}}, 80%, ${{35 + 20 * v}}%)`; }}
let timer = null;
function draw() {{
  clearInterval(timer); svg.innerHTML = ""; let i = 1;
  timer = setInterval(() => {{
    if (i >= D.xy.length) {{ clearInterval(timer); return; }}
    if (!D.end[i - 1]) {{
      const s = document.createElementNS("http://www.w3.org/2000/svg", "line");
      const [a, b] = [D.xy[i - 1], D.xy[i]];
      s.setAttribute("x1", a[0]); s.setAttribute("y1", a[1]); s.setAttribute("x2", b[0]); s.setAttribute("y2", b[1]);
      s.setAttribute("stroke", colour(D.level ? D.level[i] : null)); s.setAttribute("stroke-width", "2");
      s.setAttribute("stroke-linecap", "round"); svg.appendChild(s);
    }}
    count.textContent = `${{i + 1}} / ${{D.xy.length}} points`; i++;
  }}, D.ms);
}}
document.getElementById("replay").onclick = draw; draw();
</script></body></html>
"""
