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
    xy = np.cumsum(points[:, :2] * scale, axis=0)
    pen_down = points[:-1, 2] < 0.5                       # no segment from a stroke's end to the next start
    segments = np.stack([xy[:-1], xy[1:]], axis=1)[pen_down]
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
