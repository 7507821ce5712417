"""Trade-off figures: parameter count (log x axis) against BPC or accuracy.

The front is a step line (its attainment boundary), dominated complete trials are grey, partial
and failed trials have markers of their own. A PNG through matplotlib (Agg) and an interactive
HTML through plotly (plotly.js from the CDN keeps it small); both imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hyperlab.analysis.pareto import knee, on_front, pareto_front
from hyperlab.metrics import COMPLETE, FAILED, LOG_SCALE, PARTIAL

# kind -> (matplotlib style, plotly marker); one look per kind of point in both outputs
_STYLE = {
    "front": (dict(marker="o", color="tab:blue", s=36, zorder=3), dict(symbol="circle", color="#1f77b4", size=9)),
    "dominated": (dict(marker="o", color="0.7", s=18, zorder=2), dict(symbol="circle", color="#b3b3b3", size=6)),
    PARTIAL: (dict(marker="^", facecolors="none", edgecolors="tab:orange", s=30, zorder=2),
              dict(symbol="triangle-up-open", color="#ff7f0e", size=8)),
    FAILED: (dict(marker="x", color="tab:red", s=30, zorder=2), dict(symbol="x", color="#d62728", size=8)),
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def axes_of(objectives: dict[str, str]) -> tuple[str, str]:
    """(x, y) metrics of the figure: the parameter count (else the first objective) on x."""
    names = list(objectives)
    if len(names) < 2:
        raise ValueError(f"a trade-off figure needs two objectives, got {names}")
    x = "model/n_params" if "model/n_params" in names else names[0]
    return x, next(name for name in names if name != x)


def point_kinds(df: pd.DataFrame, objectives: dict[str, str]) -> pd.Series:
    """Kind of every row: 'front', 'dominated', 'partial', 'failed' or 'running' (not drawn)."""
    ranks = pareto_front(df, objectives)
    kinds = pd.Series("dominated", index=df.index)
    kinds[on_front(ranks)] = "front"
    if "fidelity" in df.columns:
        kinds[df["fidelity"] == PARTIAL] = PARTIAL
        kinds[df["fidelity"] == FAILED] = FAILED
        kinds[~df["fidelity"].isin([COMPLETE, PARTIAL, FAILED])] = "running"  # not drawn
    kinds[ranks.isna() & (kinds == "dominated")] = FAILED  # complete but a value missing
    return kinds


def _front_xy(df: pd.DataFrame, kinds: pd.Series, x: str, y: str, n_objectives: int) -> tuple[np.ndarray, np.ndarray]:
    # the step line; with more than two objectives the front is no staircase in (x, y): markers only
    front = df[kinds == "front"].sort_values([x, y]) if n_objectives == 2 else df.iloc[:0]
    return front[x].to_numpy(float), front[y].to_numpy(float)


def _plottable(df: pd.DataFrame, x: str, y: str) -> np.ndarray:
    values = df[[x, y]].to_numpy(float)                    # (n, 2)
    finite = np.isfinite(values).all(axis=1)
    return finite & (values[:, 0] > 0) if x in LOG_SCALE else finite


def tradeoff_figure(df: pd.DataFrame, objectives: dict[str, str], png_path, html_path=None,
                    title: str = "", paper: pd.DataFrame | None = None) -> None:
    """Draw one search's trade-off (front, dominated, partial, failed; knee starred; the paper's
    results as black diamonds when ``paper`` is given) to ``png_path`` and, optionally, HTML."""
    x, y = axes_of(objectives)
    kinds = point_kinds(df, objectives)
    shown = _plottable(df, x, y)
    groups = {kind: df[shown & (kinds == kind)] for kind in _STYLE}
    front_xy = _front_xy(df, kinds, x, y, len(objectives))
    knee_row = df.loc[knee(df[kinds == "front"], objectives)] \
        if (kinds == "front").any() and len(objectives) == 2 else None
    paper = paper[paper["metric"] == y] if paper is not None and x == "model/n_params" else None
    _png(png_path, x, y, title, [(kind, groups[kind], _STYLE[kind][0]) for kind in _STYLE],
         [("front", front_xy, "tab:blue")], knee_row, paper)
    if html_path is not None:
        traces = [(kind, groups[kind], _STYLE[kind][1]) for kind in _STYLE]
        _html(html_path, x, y, title, traces, [("front", front_xy, "#1f77b4")], knee_row, paper)


def overlay_figure(searches: dict[str, pd.DataFrame], objectives: dict[str, str], png_path,
                   html_path=None, title: str = "") -> None:
    """The fronts of several searches in one figure, one colour each (dominated points faint)."""
    x, y = axes_of(objectives)
    points, fhtml, lines = [], [], []
    for i, (name, df) in enumerate(searches.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        kinds = point_kinds(df, objectives)
        shown = _plottable(df, x, y)
        front, rest = df[shown & (kinds == "front")], df[shown & (kinds == "dominated")]
        points.append((f"{name} front", front, dict(marker="o", color=colour, s=36, zorder=3)))
        points.append((f"{name} dominated", rest, dict(marker="o", color=colour, s=10, alpha=0.25)))
        fhtml.append((f"{name} front", front, dict(symbol="circle", color=colour, size=9)))
        fhtml.append((f"{name} dominated", rest, dict(symbol="circle", color=colour, size=5, opacity=0.3)))
        lines.append((name, _front_xy(df, kinds, x, y, len(objectives)), colour))
    _png(png_path, x, y, title, points, lines, None, None)
    if html_path is not None:
        _html(html_path, x, y, title, fhtml, lines, None, None)


def _png(path, x, y, title, groups, lines, knee_row, paper) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; harmless when already set
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    for label, (xs, ys), colour in lines:
        if len(xs):
            ax.step(xs, ys, where="post", color=colour, lw=1.4, label=None if label == "front" else label)
    for label, rows, style in groups:
        if len(rows):
            ax.scatter(rows[x], rows[y], label=f"{label} ({len(rows)})", **style)
    if knee_row is not None:
        ax.scatter([knee_row[x]], [knee_row[y]], marker="*", s=220, color="gold", edgecolors="k", zorder=4, label="knee")
    if paper is not None and len(paper):
        ax.scatter(paper["params"], paper["value"], marker="D", color="k", s=24, zorder=4, label="paper")
    if x in LOG_SCALE:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty search draws empty axes
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(path), format="png")
    plt.close(fig)


def _html(path, x, y, title, groups, lines, knee_row, paper) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, (xs, ys), colour in lines:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(shape="hv", color=colour), name=f"{label} step"))
    for label, rows, marker in groups:
        hover = rows.get("run_id", pd.Series(rows.index.astype(str), index=rows.index)).astype(str)
        fig.add_trace(go.Scatter(x=rows[x], y=rows[y], mode="markers", marker=marker, name=label, text=hover))
    if knee_row is not None:
        fig.add_trace(go.Scatter(x=[knee_row[x]], y=[knee_row[y]], mode="markers", name="knee",
                                 marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1))))
    if paper is not None and len(paper):
        fig.add_trace(go.Scatter(x=paper["params"], y=paper["value"], mode="markers", name="paper",
                                 text=paper["model"], marker=dict(symbol="diamond", color="black", size=8)))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    if x in LOG_SCALE:
        fig.update_xaxes(type="log")
    fig.write_html(str(path), include_plotlyjs=True)


def hypervolume_figure(series: pd.DataFrame, png_path) -> None:
    """A search's hypervolume after each complete trial against the compute spent by then (GPU-hours, or
    CPU-hours where no GPU was used) and against wall time: ``series`` has the columns
    ``search/hypervolume``, ``search/cpu_hours``, ``search/gpu_hours``, ``search/wall_hours``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compute = "search/gpu_hours" if series["search/gpu_hours"].max() > 0 else "search/cpu_hours"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=130, sharey=True)
    for ax, x, label in ((axes[0], compute, compute.split("/")[1].replace("_", "-")),
                         (axes[1], "search/wall_hours", "wall hours")):
        ax.step(series[x], series["search/hypervolume"], where="post", marker="o", ms=3)
        ax.set(xlabel=label)
        ax.grid(True, alpha=0.3)
    axes[0].set(ylabel="hypervolume")
    fig.tight_layout()
    fig.savefig(Path(png_path), format="png")
    plt.close(fig)
