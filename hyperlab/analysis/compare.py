"""Comparing searches: hypervolumes against one reference, and who dominates whose front points."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hyperlab.analysis.hypervolume import common_reference, search_hypervolume
from hyperlab.analysis.pareto import front_of, minimisation_matrix
from hyperlab.errors import UserError


def dominated_mask(points: np.ndarray, by: np.ndarray) -> np.ndarray:
    """(n,) True where a row of ``points`` (n, m) is dominated by some row of ``by`` (k, m);
    both in minimisation form. Equal points do not dominate each other."""
    if len(points) == 0 or len(by) == 0:
        return np.zeros(len(points), dtype=bool)
    le = (by[None, :, :] <= points[:, None, :]).all(axis=2)   # (n, k)
    lt = (by[None, :, :] < points[:, None, :]).any(axis=2)    # (n, k)
    return (le & lt).any(axis=1)


def cross_domination(fronts: dict[str, pd.DataFrame], objectives: dict[str, str]) -> pd.DataFrame:
    """One row per front point of every search: which other searches' fronts dominate it.

    Columns: search, run_id (when present), the objectives, ``dominated_by`` (names joined by
    ', ', empty when none) and ``n_dominating`` (how many other searches dominate the point).
    """
    matrices = {name: minimisation_matrix(front, objectives) for name, front in fronts.items()}
    tables = []
    for name, front in fronts.items():
        others = [other for other in fronts if other != name]
        masks = {other: dominated_mask(matrices[name], matrices[other]) for other in others}
        table = front[[c for c in ["run_id", *objectives] if c in front.columns]].copy()
        table.insert(0, "search", name)
        by = [[other for other in others if masks[other][i]] for i in range(len(front))]
        table["dominated_by"] = [", ".join(names) for names in by]
        table["n_dominating"] = [len(names) for names in by]
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def shared_objectives(objective_sets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The objectives every search shares; searches with different objectives cannot be compared."""
    (first_name, first), *rest = objective_sets.items()
    for name, objectives in rest:
        if objectives != first:
            raise UserError(f"searches {first_name!r} and {name!r} have different objectives "
                            f"({first} vs {objectives}); compare needs the same objectives")
    return first


def compare_searches(searches: dict[str, pd.DataFrame], objectives: dict[str, str], margin: float = 0.1,
                     references: dict[str, dict[str, float]] | None = None) -> dict:
    """Fronts, hypervolumes against one common reference, cross-domination and the spread.

    The reference: with ``references`` (each search's own, objective -> value, as its parent run records
    it) for every search, the one they share, so each hypervolume equals the one its search logged;
    where they differ, the worst of them per objective. Otherwise :func:`common_reference` of the trials.

    Returns {"reference": list, "reference_from": "the searches' own" | "the worst of the searches' own" |
    "the trials", "hypervolume": {name: float}, "fronts": {name: DataFrame},
    "domination": DataFrame (see :func:`cross_domination`), "mean": float, "std": float}
    where the spread (mean, sample std) is over all given searches, taken as repeats of one
    search space (they share the objectives).
    """
    own = [references.get(name) for name in searches] if references else []
    if own and all(ref is not None and set(objectives) <= set(ref) for ref in own):
        points = np.array([[ref[name] for name in objectives] for ref in own], dtype=float)
        worst = np.where([objectives[name] == "min" for name in objectives], points.max(0), points.min(0))
        reference = [float(v) for v in worst]
        source = "the searches' own" if (points == points[0]).all() else "the worst of the searches' own"
    else:
        reference, source = common_reference(list(searches.values()), objectives, margin), "the trials"
    volumes = {name: search_hypervolume(df, objectives, reference) for name, df in searches.items()}
    fronts = {name: front_of(df, objectives) for name, df in searches.items()}
    values = np.array(list(volumes.values()))
    return {
        "at_equal_compute": at_equal_compute(searches, objectives, reference),
        "reference": reference,
        "reference_from": source,
        "hypervolume": volumes,
        "fronts": fronts,
        "domination": cross_domination(fronts, objectives),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    }


def hypervolume_at_compute(df: pd.DataFrame, objectives: dict[str, str], reference, hours: float,
                           kind: str = "cpu") -> float:
    """The hypervolume of the complete trials a search had finished by the time its trials (all of them,
    in the order they ended) had spent ``hours`` of ``kind`` ("cpu" or "gpu") compute: the columns
    ``cost/cpu_seconds`` / ``cost/gpu_seconds`` and ``end_time``."""
    column = f"cost/{kind}_seconds"
    if column not in df or "end_time" not in df:
        return float("nan")
    ended = df[df["end_time"].notna()].sort_values("end_time")
    spent = ended[column].fillna(0.0).cumsum() / 3600
    return search_hypervolume(ended[spent <= hours * (1 + 1e-9)], objectives, reference)


def compute_spent(df: pd.DataFrame, kind: str) -> float:
    """The hours of ``kind`` compute a search's trials spent (0 when none was recorded)."""
    column = f"cost/{kind}_seconds"
    return float(df[column].fillna(0.0).sum()) / 3600 if column in df else 0.0


def at_equal_compute(searches: dict[str, pd.DataFrame], objectives: dict[str, str], reference) -> dict | None:
    """Each search's hypervolume at the compute the cheapest of them spent (GPU-hours where any search
    used a GPU, else CPU-hours), best first: {"kind": "gpu"|"cpu", "hours": float, "hypervolume":
    {name: float}}; None when some search recorded no cost."""
    kind = "gpu" if any(compute_spent(df, "gpu") > 0 for df in searches.values()) else "cpu"
    spent = {name: compute_spent(df, kind) for name, df in searches.items()}
    if not all(spent.values()):
        return None
    hours = min(spent.values())
    volumes = {name: hypervolume_at_compute(df, objectives, reference, hours, kind) for name, df in searches.items()}
    return {"kind": kind, "hours": hours, "hypervolume": dict(sorted(volumes.items(), key=lambda kv: -kv[1]))}
