"""The one place hyperlab touches MLflow's own tables, for a ``sqlite:///`` store: a reader and the trial
runs' writer.

``MlflowClient.search_runs`` builds an object per run, param and tag (about 12x slower for a
10,000-trial search). This reader gives the same rows from four statements. ``RunWriter`` makes the calls
a search makes for each trial (create a run, log a batch, end it) as plain statements in one transaction
each: MLflow's store spends tens of milliseconds of the driver's CPU on each through its ORM (several
sessions, the run loaded again for every part of a batch), which, with hundreds of trials, is most of a
search's overhead. It writes the rows MLflow's store writes (the test compares every row of both), with
MLflow's own validation of the values.

Both work only on the schema revisions in ``TESTED_SCHEMAS`` (MLflow's alembic revision, stored in the
database); on any other the reader returns None and ``RunWriter.open`` returns None, and the caller goes
through MLflow's client, which knows every schema it migrated. Tested on MLflow 3.17 (``pyproject.toml``
bounds the version).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path

import pandas as pd

from hyperlab.errors import UserError

TESTED_SCHEMAS = frozenset({"dc11669786a5"})  # MLflow 3.17's latest alembic revision

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


def runs_with_tag(db: Path, experiment: str | None, tag: str, value: str) -> pd.DataFrame | None:
    """Active runs tagged ``tag=value`` (of one experiment, or all), one row each: run_id, experiment,
    status, start_time, end_time (UTC), ``params.*``, ``metrics.*`` (latest values), ``tags.*``.
    None when the store's schema is not one this reader was tested on."""
    try:
        # read-only; waits up to 30 s for a writer's lock (a search logging trials meanwhile)
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            if _schema(conn, db) not in TESTED_SCHEMAS:
                return None
            conn.execute("BEGIN")  # one snapshot for all the queries below, whatever a writer does meanwhile
            conn.execute("CREATE TEMP TABLE selected (run_uuid TEXT PRIMARY KEY)")
            sql = _RUNS_SQL.format(and_experiment="AND e.name = ?" if experiment is not None else "")
            runs = pd.read_sql_query(sql, conn, params=[tag, value] + ([experiment] if experiment is not None else []))
            conn.executemany("INSERT INTO selected VALUES (?)", ((r,) for r in runs["run_id"]))
            wide = [runs.set_index("run_id")]
            for prefix, (table, expression) in _CHILD_SQL.items():
                long = pd.read_sql_query(
                    f'SELECT c.run_uuid AS run_id, c."key" AS key, {expression} AS value '
                    f"FROM {table} c JOIN selected s ON s.run_uuid = c.run_uuid", conn)
                wide.append(_pivot(long, prefix, float if prefix == "metrics" else object))
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:
        raise UserError(f"{db} is not a readable MLflow store ({err})") from None
    frame = pd.concat(wide, axis=1).rename_axis("run_id").reset_index()
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame


def _schema(conn: sqlite3.Connection, db: Path) -> str | None:
    """MLflow's alembic revision of the store; UserError for a file that is no MLflow store at all."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"alembic_version", "runs", "experiments"} <= tables:
        raise UserError(f"{db} is not an MLflow store (it has no MLflow tables)")
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _pivot(long: pd.DataFrame, prefix: str, dtype) -> pd.DataFrame:
    # (n_values, 3) long rows -> (n_runs, n_keys) wide; keys become "<prefix>.<key>"
    wide = long.pivot(index="run_id", columns="key", values="value").astype(dtype)
    wide.columns = [f"{prefix}.{key}" for key in wide.columns]
    return wide


class RunWriter:
    """Trial runs of a sqlite store written with SQL (see the module docstring); one connection, used by one
    thread at a time. Errors are MLflow's (``MlflowException``) where MLflow's store would raise one, and
    sqlite's ``OperationalError`` (transient: "database is locked") otherwise."""

    def __init__(self, db: Path):
        self._conn = sqlite3.connect(str(db), timeout=30, isolation_level=None, check_same_thread=False)
        write_ahead(self._conn)
        self._lock = threading.Lock()
        self._artifact_roots: dict[str, str] = {}

    @classmethod
    def open(cls, tracking_uri: str) -> RunWriter | None:
        """A writer for ``tracking_uri``, or None where MLflow's client must write (not a sqlite store, or a
        schema this writer was not tested on)."""
        from hyperlab.tracking.store import sqlite_path

        db = sqlite_path(tracking_uri)
        if db is None or not db.is_file():
            return None
        try:
            with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
                if _schema(conn, db) not in TESTED_SCHEMAS:
                    return None
        except (sqlite3.DatabaseError, UserError):
            return None
        return cls(db)

    def close(self) -> None:
        self._conn.close()

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], start_time: int | None = None) -> str:
        """A RUNNING run, as ``MlflowClient.create_run``: its name also as the ``mlflow.runName`` tag, its
        artifacts under the experiment's location; returns its id."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.validation import _validate_tag

        tags = {**tags, MLFLOW_RUN_NAME: run_name}
        validated = [_validate_tag(key, value) for key, value in tags.items()]
        run_id = uuid.uuid4().hex
        with self._transaction() as conn:
            root = self._artifact_root(conn, experiment_id)
            conn.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, deleted_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                "VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, NULL, '', 'active', ?, ?)",
                (run_id, run_name, tags.get(MLFLOW_USER, "unknown"), _millis(start_time),
                 f"{root.rstrip('/')}/{run_id}/artifacts", int(experiment_id)))
            self._set_tags(conn, run_id, validated)
        return run_id

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """``MlflowClient.log_batch``: metrics appended (a row logged before is not logged again) and the
        latest value per key kept (greatest step, then timestamp, then value), params set once (the same
        value again is allowed, a different one is refused), tags set or overwritten; all or nothing."""
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import _validate_batch_log_data, _validate_batch_log_limits, _validate_param_keys_unique

        metrics, params, tags = _validate_batch_log_data(list(metrics), list(params), list(tags))
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        with self._transaction() as conn:
            self._check_active(conn, run_id)
            if params:
                conn.executemany('INSERT OR IGNORE INTO params ("key", value, run_uuid) VALUES (?, ?, ?)',
                                 [(p.key, p.value, run_id) for p in params])
                stored = dict(conn.execute(f'SELECT "key", value FROM params WHERE run_uuid = ? AND "key" IN '
                                           f'({",".join("?" * len(params))})', [run_id, *(p.key for p in params)]))
                changed = [p for p in params if stored.get(p.key) != p.value]
                if changed:
                    raise MlflowException.invalid_parameter_value(
                        f"Changing param values is not allowed. Params were already logged for run {run_id!r}: "
                        + ", ".join(f"{p.key}={stored.get(p.key)!r} (new value {p.value!r})" for p in changed))
            if metrics:
                rows = [(m.key, *_sanitized(m.value), int(m.timestamp), int(m.step or 0), run_id) for m in metrics]
                conn.executemany('INSERT OR IGNORE INTO metrics ("key", value, is_nan, timestamp, step, run_uuid) '
                                 'VALUES (?, ?, ?, ?, ?, ?)', rows)
                conn.executemany(_LATEST_SQL, rows)
            self._set_tags(conn, run_id, tags)

    def set_status(self, run_id: str, status: str, end_time: int | None = None, ended: bool = False) -> None:
        """``MlflowClient.update_run`` (``ended=False``) or ``set_terminated`` (end time now if not given)."""
        from mlflow.entities import RunStatus

        RunStatus.from_string(status)  # MlflowException for a status MLflow does not know
        with self._transaction() as conn:
            self._check_active(conn, run_id)
            if ended:
                conn.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                             (status, _millis(end_time), run_id))
            else:
                conn.execute("UPDATE runs SET status = ? WHERE run_uuid = ?", (status, run_id))

    # ---- parts ---------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlock with a reader
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _artifact_root(self, conn: sqlite3.Connection, experiment_id: str) -> str:
        from mlflow.exceptions import MlflowException

        if experiment_id not in self._artifact_roots:
            row = conn.execute("SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?",
                               (int(experiment_id),)).fetchone()
            if row is None or row[1] != "active":
                raise MlflowException.invalid_parameter_value(f"no active experiment with id {experiment_id}")
            self._artifact_roots[experiment_id] = row[0]
        return self._artifact_roots[experiment_id]

    @staticmethod
    def _check_active(conn: sqlite3.Connection, run_id: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        row = conn.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        if row[0] != "active":
            raise MlflowException.invalid_parameter_value(f"The run {run_id} must be in the 'active' state. "
                                                          f"Current state is {row[0]}.")

    @staticmethod
    def _set_tags(conn: sqlite3.Connection, run_id: str, tags) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        conn.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?) '
                         'ON CONFLICT ("key", run_uuid) DO UPDATE SET value = excluded.value',
                         [(t.key, t.value, run_id) for t in tags])
        names = [t.value for t in tags if t.key == MLFLOW_RUN_NAME]
        if names:  # MLflow keeps the run's name and this tag equal
            conn.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (names[-1], run_id))


_MAX_FLOAT = 1.7976931348623157e308
_LATEST_SQL = """
INSERT INTO latest_metrics ("key", value, is_nan, timestamp, step, run_uuid) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT ("key", run_uuid) DO UPDATE SET
    value = excluded.value, is_nan = excluded.is_nan, timestamp = excluded.timestamp, step = excluded.step
WHERE (excluded.step, excluded.timestamp, excluded.value)
    > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)
"""


def write_ahead(conn: sqlite3.Connection) -> None:
    """A sqlite database in write-ahead-log mode (kept by the file, for every connection: readers never wait
    for the writer, nor it for them) and this connection's commits without a sync to disk (in that mode a
    transaction committed survives the process being killed at any moment; only a power cut can take the
    last ones back, never the file's consistency): a commit then costs the writer microseconds, not the
    journal file's creation, syncs and deletion."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # another connection holds the database; it stays as it is
        pass
    conn.execute("PRAGMA synchronous=NORMAL")


def _sanitized(value: float) -> tuple[float, int]:
    """(value, is_nan) as MLflow stores a metric: NaN as 0 with the flag, infinities as the largest floats."""
    value = float(value)
    if value != value:
        return 0.0, 1
    if value in (float("inf"), float("-inf")):
        return (_MAX_FLOAT if value > 0 else -_MAX_FLOAT), 0
    return value, 0


def _millis(value: int | None) -> int:
    return int(value) if value is not None else int(time.time() * 1000)
