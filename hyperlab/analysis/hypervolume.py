"""Exact hypervolume, and the reference points it is measured from.

The hypervolume of a set is the volume of the region it dominates, bounded by a reference point.
Two objectives: a sort and a sweep, O(n log n). Three or more: HSO slicing (sort by the last
objective, sum slab volumes of (m-1)-dimensional hypervolumes), exact, O(n^(m-1) log n).

For searches (:func:`search_hypervolume`) parameter counts are measured on a log10 scale, like
every figure, so that halving a model counts the same at 1e5 and at 1e7 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hyperlab.analysis.pareto import scaled_matrix
from hyperlab.errors import UserError
from hyperlab.metrics import COMPLETE, LOG_SCALE, NATURAL_WORST


def hypervolume(points, reference, directions: Sequence[str]) -> float:
    """Exact hypervolume of ``points`` (n, m) against ``reference`` (m,), per-column 'min'/'max'.

    Points not strictly better than the reference in every objective contribute nothing.
    """
    signs = _signs(directions)
    points = np.asarray(points, dtype=float).reshape(-1, len(signs)) * signs
    reference = np.asarray(reference, dtype=float).reshape(-1) * signs
    if reference.shape != signs.shape or not np.isfinite(reference).all():
        raise UserError(f"the reference point must be {len(signs)} finite numbers, got {reference}")
    inside = points[np.isfinite(points).all(axis=1) & (points < reference).all(axis=1)]
    return float(_hv_min(inside, reference))


def _signs(directions: Sequence[str]) -> np.ndarray:
    bad = [d for d in directions if d not in ("min", "max")]
    if bad or not directions:
        raise UserError(f"directions must be a non-empty list of 'min'/'max', got {list(directions)}")
    return np.array([1.0 if d == "min" else -1.0 for d in directions])


def _hv_min(points: np.ndarray, reference: np.ndarray) -> float:
    # points (n, m), all strictly below reference (m,), everything minimised
    if len(points) == 0:
        return 0.0
    m = points.shape[1]
    if m == 1:
        return float(reference[0] - points[:, 0].min())
    if m == 2:
        return _hv_2d(points, reference)
    return _hv_slices(points, reference)


def _hv_2d(points: np.ndarray, reference: np.ndarray) -> float:
    order = np.lexsort((points[:, 1], points[:, 0]))       # by f1, ties by f2
    x, y = points[order, 0], points[order, 1]
    best_y_before = np.minimum.accumulate(np.concatenate(([np.inf], y[:-1])))
    keep = y < best_y_before                                # the staircase: y strictly falls
    x, y = x[keep], y[keep]
    widths = np.diff(np.append(x, reference[0]))            # (k,) from each step to the next
    return float((widths * (reference[1] - y)).sum())


def _hv_slices(points: np.ndarray, reference: np.ndarray) -> float:
    # Slab between consecutive values of the last objective: every point at or below the slab's
    # floor dominates it, so its volume is the (m-1)-dimensional hypervolume of those points.
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    floors = points[:, -1]
    ceilings = np.append(floors[1:], reference[-1])
    volume = 0.0
    for i in np.flatnonzero(ceilings > floors):             # skip zero-height slabs (ties)
        volume += (ceilings[i] - floors[i]) * _hv_min(points[: i + 1, :-1], reference[:-1])
    return volume


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["fidelity"] == COMPLETE] if "fidelity" in df.columns else df


def common_reference(dfs: Sequence[pd.DataFrame], objectives: dict[str, str], margin: float = 0.1) -> list[float]:
    """One reference point for several searches: per objective, the worst value over every search's
    complete trials, pushed out by ``margin`` times the observed range (a ratio on a log scale for
    :data:`LOG_SCALE` metrics). A zero range pushes out by ``margin`` times the value itself
    (one decade times ``margin`` on a log scale)."""
    complete = [_complete(df) for df in dfs]
    points = np.vstack([scaled_matrix(df, objectives) for df in complete] or [np.empty((0, len(objectives)))])
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) == 0:
        raise UserError("no complete trial with every objective: no reference point can be set")
    worst, best = points.max(axis=0), points.min(axis=0)    # minimisation form
    span = worst - best
    fallback = np.array([1.0 if name in LOG_SCALE else max(abs(w), 1e-12)
                         for name, w in zip(objectives, worst)])
    reference = worst + margin * np.where(span > 0, span, fallback)
    return _unscale(reference, objectives)


def _unscale(scaled: np.ndarray, objectives: dict[str, str]) -> list[float]:
    values = []
    for value, (name, d) in zip(scaled, objectives.items()):
        value = value if d == "min" else -value
        values.append(float(10 ** value) if name in LOG_SCALE else float(value))
    return values


def search_reference(objectives: dict[str, str], df: pd.DataFrame, margin: float = 0.1,
                     bounds: dict[str, float] | None = None) -> list[float]:
    """The fixed reference point of one search's hypervolume series.

    Rule, per objective: a bound the caller knows (``bounds``, e.g. the search's parameter budget
    for ``model/n_params``, or log2 of the vocabulary for bits per character: a uniform guess);
    else the metric's worst possible value (:data:`NATURAL_WORST`: accuracy 0); else
    :func:`common_reference` of the complete trials in ``df``. The caller computes it once, from
    the first complete trial(s), and persists it (e.g. as a tag on the parent run): a reference
    that moved with later trials would make the series incomparable over time.
    """
    bounds = {**NATURAL_WORST, **(bounds or {})}
    unknown = set(bounds) - set(NATURAL_WORST) - set(objectives)
    if unknown:
        raise UserError(f"bounds for {sorted(unknown)}, which are not objectives {list(objectives)}")
    if all(name in bounds for name in objectives):
        return [float(bounds[name]) for name in objectives]
    reference = common_reference([df], objectives, margin)
    return [float(bounds.get(name, value)) for name, value in zip(objectives, reference)]


def search_hypervolume(df: pd.DataFrame, objectives: dict[str, str], reference: Sequence[float]) -> float:
    """Hypervolume of a search's complete trials, log10 for :data:`LOG_SCALE` objectives."""
    points = scaled_matrix(_complete(df), objectives)
    ref = scaled_matrix(pd.DataFrame([list(reference)], columns=list(objectives)), objectives)[0]
    return hypervolume(points, ref, ["min"] * len(objectives))
