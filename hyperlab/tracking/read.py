"""Read searches back from MLflow, in the layout of :mod:`hyperlab.tracking.layout`.

A ``sqlite:///`` store of a tested schema is read by a direct read-only SQL query
(:mod:`hyperlab.tracking.mlflow_sql`: 10,000 runs in well under a second); any other store (a
tracking server, a schema this code was not tested on) through ``MlflowClient.search_runs`` with
paging. Both return one row per run with MLflow's own column
convention: ``run_id``, ``status``, ``start_time``, ``end_time`` (UTC timestamps), ``params.<key>``
(strings, as MLflow stores them), ``metrics.<name>`` (floats: the latest value of each metric)
and ``tags.<key>`` (strings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from hyperlab.errors import UserError
from hyperlab.tracking import layout, mlflow_sql
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


def read_parent_text(name: str, tracking_uri: str, artifact: str) -> str:
    """A text artifact of a search's parent run (its manifest, its search space); UserError without it."""
    import tempfile

    import mlflow

    meta = read_search_meta(name, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=meta.parent_run_id, artifact_path=artifact,
                                                       dst_path=tmp, tracking_uri=tracking_uri)
            with open(path, encoding="utf-8") as f:
                return f.read()
        except Exception as err:  # noqa: BLE001 - MlflowException, OSError, UnicodeError: not readable
            raise UserError(f"search {name!r} in {tracking_uri}: its parent run has no readable {artifact} "
                            f"({type(err).__name__})") from None


def read_manifest(name: str, tracking_uri: str) -> dict:
    """Where search ``name`` lives, as its parent run recorded it (``layout.MANIFEST_ARTIFACT``)."""
    text = read_parent_text(name, tracking_uri, layout.MANIFEST_ARTIFACT)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"search {name!r}: {layout.MANIFEST_ARTIFACT} is not a readable search manifest ({err})") from None


def read_trials(name: str, tracking_uri: str) -> pd.DataFrame:
    """All trial runs of search ``name``, one row each (columns as in the module docstring)."""
    if name not in list_searches(tracking_uri):
        raise _unknown_search(name, tracking_uri)
    runs = _runs_with_role(tracking_uri, name, layout.ROLE_TRIAL)
    return runs.drop(columns="experiment").reset_index(drop=True)


RUN_ID_LENGTH = 32


def resolve_run_id(run: str, tracking_uri: str) -> str:
    """A run's full id from its id or an unambiguous prefix of it (as ``hyperlab pareto`` prints them);
    a prefix that matches no run, or several, is a UserError naming them."""
    import re

    import mlflow

    run = run.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,32}", run):
        raise UserError(f"{run!r} is not a run id: expected up to 32 hexadecimal characters (a prefix of one will do)")
    if len(run) == RUN_ID_LENGTH:
        return run
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in _all_experiments(client)]
    matches, token = [], None
    while experiments:
        page = client.search_runs(experiments, filter_string=f"attributes.run_id LIKE '{run}%'",
                                  max_results=PAGE_SIZE, page_token=token)
        matches.extend(r.info.run_id for r in page)
        token = page.token
        if not token or len(matches) > 1:
            break
    if not matches:
        raise UserError(f"no run whose id starts with {run!r} in {tracking_uri}")
    if len(matches) > 1:
        raise UserError(f"run id prefix {run!r} is ambiguous in {tracking_uri} ({', '.join(matches[:5])}...): "
                        "give more of it")
    return matches[0]


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
        frame = mlflow_sql.runs_with_tag(db, experiment, layout.TAG_ROLE, role)
        if frame is not None:
            return frame
    return _client_runs(tracking_uri, experiment, role)


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
