"""Searches as tables: one row per trial, params cast to their types, metrics as float columns.

These frames are what :mod:`hyperlab.analysis` computes on (it reads no store itself)::

    from hyperlab.tracking import load_search
    df = load_search("mnist-nz")  # $MLFLOW_TRACKING_URI, else hyperlab-runs/mlflow.db
"""

from __future__ import annotations

import re

import pandas as pd

from hyperlab.errors import UserError
from hyperlab.metrics import METRICS, RUNNING
from hyperlab.tracking import layout, read
from hyperlab.tracking.read import SearchMeta
from hyperlab.tracking.store import resolve_tracking_uri

TAG_COLUMNS = {
    layout.TAG_OPTUNA_TRIAL: "optuna_trial",
    layout.TAG_TRIAL_ID: "ray_trial_id",
    layout.TAG_OUTCOME: "outcome",
    layout.TAG_CHECKPOINT: "checkpoint",
}
"""Trial tags kept as columns, and their column names."""

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)$", re.IGNORECASE)


def load_search(name: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per trial run of search ``name``.

    Columns: run_id, status, fidelity (complete / partial / failed, or :data:`RUNNING`),
    start_time, end_time, the params under their dotted keys cast to int / float / bool / str (int and
    bool nullable when a param is absent from some trials), each final metric as a float column named
    as the metric (``val/bpc``), and the tags of :data:`TAG_COLUMNS` (``optuna_trial`` as a nullable
    int). Every objective of the search is a column, NaN where a trial logged no value. Unknown name:
    UserError listing the known ones. ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI``, else the
    embedded store ``hyperlab-runs/mlflow.db``.
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    objectives = read.read_search_meta(name, tracking_uri).objectives
    table = trial_table(read.read_trials(name, tracking_uri))
    missing = {name: float("nan") for name in objectives if name not in table.columns}
    return table.assign(**missing) if missing else table


def load_search_meta(name: str, tracking_uri: str | None = None) -> SearchMeta:
    """The search's parent run: id, objectives, status, wall time (``.wall_time_s``), tags."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    return read.read_search_meta(name, tracking_uri)


def objectives_of(meta: SearchMeta) -> dict[str, str]:
    """The search's objectives, directions checked against :mod:`hyperlab.metrics`."""
    if not meta.objectives:
        raise UserError(f"search {meta.name!r}: the parent run has no {layout.TAG_OBJECTIVES} tag")
    for name, direction in meta.objectives.items():
        known = METRICS.get(name)
        if direction not in ("min", "max") or (known and known != direction):
            raise UserError(f"search {meta.name!r}: objective {name!r} has direction {direction!r}; "
                            f"expected {known or 'min or max'!r}")
    return dict(meta.objectives)


def trial_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Turn a reader's frame (``params.*``, ``metrics.*``, ``tags.*`` string columns) into the
    table of :func:`load_search`."""
    table = raw[["run_id", "status", "start_time", "end_time"]].copy()
    fidelity_tag = f"tags.{layout.TAG_FIDELITY}"
    fidelity = raw[fidelity_tag] if fidelity_tag in raw else pd.Series(pd.NA, index=raw.index)
    # a run without the tag: infer it from the run status (the layout's one-to-one mapping);
    # a trial still running (or scheduled) has no fidelity yet: RUNNING
    from_status = raw["status"].map({**{s: f for f, s in layout.STATUS_OF_FIDELITY.items()},
                                     "RUNNING": RUNNING, "SCHEDULED": RUNNING})
    table.insert(2, "fidelity", fidelity.fillna(from_status))
    columns = {key.removeprefix("params."): cast_param(raw[key])
               for key in sorted(raw.columns) if key.startswith("params.")}
    columns |= {key.removeprefix("metrics."): raw[key].astype(float)
                for key in sorted(raw.columns) if key.startswith("metrics.")}
    for tag, column in TAG_COLUMNS.items():
        if f"tags.{tag}" in raw:
            values = raw[f"tags.{tag}"]
            columns[column] = cast_param(values) if column == "optuna_trial" else values
    table = pd.concat([table, pd.DataFrame(columns, index=raw.index)], axis=1)
    sort = ["optuna_trial", "start_time"] if "optuna_trial" in table else ["start_time"]
    return table.sort_values(sort, kind="stable").reset_index(drop=True)


def cast_param(values: pd.Series) -> pd.Series:
    """MLflow's param strings as int (Int64 if some are missing), float, bool (boolean) or str."""
    present = values.dropna().astype(str)
    if present.empty:
        return values.astype(object)
    if present.str.fullmatch(_INT).all():
        ints = pd.to_numeric(values).astype("Int64")
        return ints.astype("int64") if len(present) == len(values) else ints
    if present.str.fullmatch(_FLOAT).all():
        return pd.to_numeric(values).astype(float)
    lowered = present.str.lower()
    if lowered.isin(["true", "false"]).all():
        flags = values.str.lower().map({"true": True, "false": False}).astype("boolean")
        return flags.astype(bool) if len(present) == len(values) else flags
    return values.astype(object)
