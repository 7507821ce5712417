"""Non-dominated sorting and the knee of a front.

Every function first turns the objectives into a minimisation problem (``max`` columns negated),
so "q dominates p" reads: q <= p in every objective and q != p. Equal points are mutually
non-dominated and share a rank. Ranks are 1 (the Pareto front), 2, 3, ...
"""

from __future__ import annotations

import bisect

import numpy as np
import pandas as pd

from hyperlab.errors import UserError
from hyperlab.metrics import COMPLETE, LOG_SCALE

_BLOCK = 512  # rows per block of the (block, n, m) dominance test: bounds memory at block*n*m bytes


def minimisation_matrix(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """(n, m) float array of the objective columns with ``max`` objectives negated."""
    missing = [name for name in objectives if name not in df.columns]
    if missing:
        raise UserError(f"objective column(s) {missing} not in the table; columns: {list(df.columns)}")
    bad = {name: d for name, d in objectives.items() if d not in ("min", "max")}
    if bad:
        raise UserError(f"objective directions must be 'min' or 'max', got {bad}")
    signs = np.array([1.0 if d == "min" else -1.0 for d in objectives.values()])
    return df[list(objectives)].to_numpy(dtype=float) * signs


def non_dominated_ranks(points: np.ndarray) -> np.ndarray:
    """Rank of each row of an (n, m) minimisation matrix without NaNs: 1 on the front, 2 behind it..."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(points, axis=0, return_inverse=True)  # duplicates share a rank
    if unique.shape[1] == 1:
        ranks = np.arange(1, len(unique) + 1)  # np.unique sorts: each distinct value is its own front
    elif unique.shape[1] == 2:
        ranks = _ranks_2d(unique)
    else:
        ranks = _ranks_nd(unique)
    return ranks[inverse.reshape(-1)]


def _ranks_2d(unique: np.ndarray) -> np.ndarray:
    # Rows come sorted by (f1, f2) from np.unique, so q before p dominates p iff q.f2 <= p.f2.
    # front_min[k] = smallest f2 in front k+1 so far; it is non-decreasing in k, so p joins the
    # first front whose minimum is still above p.f2 (patience sorting, O(n log n)).
    front_min: list[float] = []
    ranks = np.empty(len(unique), dtype=np.int64)
    for i, f2 in enumerate(unique[:, 1].tolist()):
        k = bisect.bisect_right(front_min, f2)
        if k == len(front_min):
            front_min.append(f2)
        else:
            front_min[k] = f2
        ranks[i] = k + 1
    return ranks


def _ranks_nd(unique: np.ndarray) -> np.ndarray:
    # dominates[i, j]: distinct point i is <= point j everywhere (so strictly better somewhere);
    # then peel fronts, Deb's counting: a point joins the front when no remaining point dominates it.
    n = len(unique)
    dominates = np.empty((n, n), dtype=bool)
    for start in range(0, n, _BLOCK):
        block = unique[start:start + _BLOCK]                               # (b, m)
        dominates[start:start + _BLOCK] = (block[:, None, :] <= unique[None, :, :]).all(axis=2)
    np.fill_diagonal(dominates, False)
    count = dominates.sum(axis=0)                                          # (n,) dominators of each
    ranks = np.zeros(n, dtype=np.int64)
    rank = 0
    while (ranks == 0).any():
        rank += 1
        front = (count == 0) & (ranks == 0)
        ranks[front] = rank
        count -= dominates[front].sum(axis=0)
    return ranks


def pareto_front(df: pd.DataFrame, objectives: dict[str, str], complete_only: bool = True) -> pd.Series:
    """Non-dominated rank of every row (nullable Int64 Series named ``rank``, index of ``df``).

    Rows take part when every objective is finite and, if ``complete_only`` and the table has a
    ``fidelity`` column, when the trial is complete; the others get <NA> (partial and failed
    trials are shown apart, never on a front).
    """
    points = minimisation_matrix(df, objectives)
    eligible = np.isfinite(points).all(axis=1)
    if complete_only and "fidelity" in df.columns:
        eligible &= (df["fidelity"] == COMPLETE).to_numpy()
    ranks = pd.Series(pd.NA, index=df.index, dtype="Int64", name="rank")
    ranks[eligible] = non_dominated_ranks(points[eligible])
    return ranks


def on_front(ranks: pd.Series) -> np.ndarray:
    """Boolean mask of the rank-1 rows of :func:`pareto_front`'s result (<NA> is off the front)."""
    return ranks.eq(1).fillna(False).to_numpy(dtype=bool)


def front_of(df: pd.DataFrame, objectives: dict[str, str], ranks: pd.Series | None = None) -> pd.DataFrame:
    """The rank-1 rows of ``df`` (complete trials only), sorted by the first objective (``ranks``: its
    :func:`pareto_front`, if the caller has it already)."""
    front = df[on_front(pareto_front(df, objectives) if ranks is None else ranks)]
    return front.sort_values(list(objectives), ascending=[d == "min" for d in objectives.values()])


def normalised(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """(n, m) minimisation matrix scaled to [0, 1] per column; log10 first for :data:`LOG_SCALE`."""
    points = scaled_matrix(df, objectives)
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (points - low) / span


def scaled_matrix(df: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """Minimisation matrix with :data:`LOG_SCALE` objectives in log10 (sign kept for ``max``)."""
    values = df[list(objectives)].to_numpy(dtype=float, copy=True)  # writable under copy-on-write
    for j, name in enumerate(objectives):
        if name in LOG_SCALE:
            values[:, j] = np.log10(values[:, j])
    signs = np.array([1.0 if d == "min" else -1.0 for d in objectives.values()])
    return values * signs


def knee(front_df: pd.DataFrame, objectives: dict[str, str]):
    """Index label of the best trade-off point of a two-objective front.

    In normalised coordinates (log10 for parameter counts, both objectives minimised, each scaled
    to [0, 1] over the front) the knee is the point farthest from the straight line joining the two
    extremes, on the side of the ideal point. Fronts of one or two points return their first row.
    """
    if len(objectives) != 2:
        raise UserError(f"the knee is defined for two objectives, got {list(objectives)}")
    if front_df.empty:
        raise UserError("the front is empty: no complete trial has every objective")
    points = normalised(front_df, objectives)                               # (n, 2)
    order = np.argsort(points[:, 0], kind="stable")
    first, last = points[order[0]], points[order[-1]]
    direction = last - first
    length = np.hypot(*direction)
    if len(front_df) <= 2 or length == 0:
        return front_df.index[order[0]]
    # signed distance to the line; positive toward the ideal corner (lower left)
    distance = ((points - first) @ np.array([direction[1], -direction[0]])) / length
    return front_df.index[int(np.argmax(distance))]
