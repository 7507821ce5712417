"""Read searches back from MLflow, in the layout of :mod:`hyperlab.tracking.layout`.

Two readers return the same frames. For a ``sqlite:///`` store a direct read-only SQL query reads
the runs, params, tags and latest metrics of one experiment in four statements (10,000 runs in well
under a second); any other store, or a sqlite schema this code does not know, goes through
``MlflowClient.search_runs`` with paging. Both return one row per run with MLflow's own column
convention: ``run_id``, ``status``, ``start_time``, ``end_time`` (UTC timestamps), ``params.<key>``
(strings, as MLflow stores them), ``metrics.<name>`` (floats: the latest value of each metric)
and ``tags.<key>`` (strings).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hyperlab.errors import UserError
from hyperlab.tracking import layout
from hyperlab.tracking.store import sqlite_path

PAGE_SIZE = 50_000  # the most MlflowClient.search_runs returns per page from a SQL store


@dataclass(frozen=True)
class SearchMeta:
    """What the parent run of a search says about it."""

    name: str
    parent_run_id: str
    objectives: dict[str, str]          # metric name -> "min" | "max", in the search's order
    status: str                         # the parent run's MLflow status
    start_time: pd.Timestamp | None
    end_time: pd.Timestamp | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def wall_time_s(self) -> float:
        """Seconds from the parent's start to its end (to now while it still runs)."""
        if self.start_time is None:
            return float("nan")
        end = self.end_time if self.end_time is not None else pd.Timestamp.now(tz="UTC")
        return (end - self.start_time).total_seconds()


def list_searches(tracking_uri: str) -> list[str]:
    """Names of the searches in a store: experiments holding a parent run tagged as a search."""
    runs = _runs_with_role(tracking_uri, None, layout.ROLE_SEARCH)
    return sorted(set(runs["experiment"]))


def read_search_meta(name: str, tracking_uri: str) -> SearchMeta:
    """The parent run of search ``name`` (the latest one, if a search was restarted under that name)."""
    runs = _runs_with_role(tracking_uri, name, layout.ROLE_SEARCH)
    if runs.empty:
        raise _unknown_search(name, tracking_uri)
    parent = runs.sort_values("start_time").iloc[-1]
    tags = {k.removeprefix("tags."): v for k, v in parent.items()
            if k.startswith("tags.") and isinstance(v, str)}
    raw = tags.get(layout.TAG_OBJECTIVES)
    try:
        objectives = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise UserError(f"search {name!r}: tag {layout.TAG_OBJECTIVES} is not JSON: {raw!r}") from None
    return SearchMeta(name=name, parent_run_id=parent["run_id"], objectives=dict(objectives),
                      status=parent["status"], start_time=_or_none(parent["start_time"]),
                      end_time=_or_none(parent["end_time"]), tags=tags)


def search_status(tracking_uri: str, name: str) -> str | None:
    """The status of search ``name``'s parent run, or None when the store holds no such search
    (a store that does not exist yet is not created)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return None
    try:
        return read_search_meta(name, tracking_uri).status
    except UserError:
        return None


def read_trials(name: str, tracking_uri: str) -> pd.DataFrame:
    """All trial runs of search ``name``, one row each (columns as in the module docstring)."""
    if name not in list_searches(tracking_uri):
        raise _unknown_search(name, tracking_uri)
    runs = _runs_with_role(tracking_uri, name, layout.ROLE_TRIAL)
    return runs.drop(columns="experiment").reset_index(drop=True)


def read_trials_with_client(name: str, tracking_uri: str) -> pd.DataFrame:
    """Like :func:`read_trials`, always through ``MlflowClient.search_runs`` (the reference reader)."""
    return _client_runs(tracking_uri, name, layout.ROLE_TRIAL).drop(columns="experiment")


def _unknown_search(name: str, tracking_uri: str) -> UserError:
    known = list_searches(tracking_uri)
    listing = ", ".join(known) if known else "none"
    return UserError(f"no search named {name!r} in {tracking_uri}; known searches: {listing}")


def _or_none(value):
    return None if pd.isna(value) else value


def _runs_with_role(tracking_uri: str, experiment: str | None, role: str) -> pd.DataFrame:
    db = sqlite_path(tracking_uri)
    if db is not None:
        if not db.is_file():
            raise UserError(f"no MLflow store at {db} (from tracking URI {tracking_uri})")
        try:
            return _sqlite_runs(db, experiment, role)
        except sqlite3.DatabaseError:
            pass  # a schema this reader does not know: MLflow's own client still reads it
    return _client_runs(tracking_uri, experiment, role)


_RUNS_SQL = """
SELECT r.run_uuid AS run_id, e.name AS experiment, r.status, r.start_time, r.end_time
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
JOIN tags t ON t.run_uuid = r.run_uuid AND t."key" = ? AND t.value = ?
WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' {and_experiment}
"""
_CHILD_SQL = {  # (table, value expression) for the per-run key/value tables
    "params": ("params", "value"),
    "tags": ("tags", "value"),
    "metrics": ("latest_metrics", "CASE WHEN is_nan THEN NULL ELSE value END"),
}


def _sqlite_runs(db: Path, experiment: str | None, role: str) -> pd.DataFrame:
    # read-only; waits up to 30 s for a writer's lock (a search logging trials meanwhile)
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        conn.execute("BEGIN")  # one snapshot for all the queries below, whatever a writer does meanwhile
        conn.execute("CREATE TEMP TABLE selected (run_uuid TEXT PRIMARY KEY)")
        sql = _RUNS_SQL.format(and_experiment="AND e.name = ?" if experiment is not None else "")
        args = [layout.TAG_ROLE, role] + ([experiment] if experiment is not None else [])
        runs = pd.read_sql_query(sql, conn, params=args)
        conn.executemany("INSERT INTO selected VALUES (?)", ((r,) for r in runs["run_id"]))
        wide = [runs.set_index("run_id")]
        for prefix, (table, value) in _CHILD_SQL.items():
            long = pd.read_sql_query(
                f'SELECT c.run_uuid AS run_id, c."key" AS key, {value} AS value '
                f"FROM {table} c JOIN selected s ON s.run_uuid = c.run_uuid", conn)
            wide.append(_pivot(long, prefix, float if prefix == "metrics" else object))
    frame = pd.concat(wide, axis=1).rename_axis("run_id").reset_index()
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame


def _pivot(long: pd.DataFrame, prefix: str, dtype) -> pd.DataFrame:
    # (n_values, 3) long rows -> (n_runs, n_keys) wide; keys become "<prefix>.<key>"
    wide = long.pivot(index="run_id", columns="key", values="value").astype(dtype)
    wide.columns = [f"{prefix}.{key}" for key in wide.columns]
    return wide


def _client_runs(tracking_uri: str, experiment: str | None, role: str) -> pd.DataFrame:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        experiments = {found.experiment_id: found.name} if found else {}
    else:
        experiments = {e.experiment_id: e.name for e in _all_experiments(client)}
    rows, token = [], None
    while experiments:
        page = client.search_runs(list(experiments), filter_string=f"tags.`{layout.TAG_ROLE}` = '{role}'",
                                  max_results=PAGE_SIZE, page_token=token)
        rows.extend(_client_row(run, experiments) for run in page)
        token = page.token
        if not token:
            break
    columns = ["run_id", "experiment", "status", "start_time", "end_time"]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame


def _all_experiments(client) -> list:
    found, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _client_row(run, experiments: dict[str, str]) -> dict:
    info, data = run.info, run.data
    row = {"run_id": info.run_id, "experiment": experiments[info.experiment_id],
           "status": info.status, "start_time": info.start_time, "end_time": info.end_time}
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"metrics.{k}": float(v) for k, v in data.metrics.items()})
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    return row
