"""``mlflow_sql.RunWriter`` against MLflow's own store: the same calls made through ``MlflowClient`` on one
store and through the writer on another leave the same rows in every table MLflow has (ids, and the
clock where the caller gives none, aside); refusals are MLflow's; another schema falls back to the client."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from hyperlab.tracking import mlflow_sql
from hyperlab.tracking.store import get_or_create_experiment
from hyperlab.tracking.writer import ClientRunWriter

NAN, INF = float("nan"), float("inf")


def _stores(_empty_store, tmp_path):
    uris = []
    for side in ("client", "sql"):
        shutil.copy(_empty_store, tmp_path / f"{side}.db")
        uris.append(f"sqlite:///{tmp_path / f'{side}.db'}")
    return uris


def _story(side, experiment_id):
    """Two runs through the calls a search makes, with the cases MLflow's store treats specially."""
    a = side.create_run(experiment_id, "t00 h16", {"hyperlab.role": "trial", "mlflow.user": "ann"}, 1000)
    b = side.create_run(experiment_id, "t01 h32", {"hyperlab.role": "trial"}, 1001)
    side.log_batch(a, metrics=[Metric("val/bpc", 2.5, 5000, 10), Metric("train/loss", NAN, 5000, 10),
                               Metric("model/n_params", 1234.0, 5000, 0)],
                   params=[Param("model.hidden_size", "16"), Param("optim.lr", "0.01")],
                   tags=[RunTag("hyperlab.node", "127.0.0.2")])
    side.log_batch(a, metrics=[Metric("val/bpc", 2.0, 6000, 20), Metric("val/bpc", 2.0, 6000, 20),  # twice
                               Metric("val/bpc", 1.5, 7000, 5),    # an older step, later: not the latest
                               Metric("train/loss", INF, 6000, 20), Metric("throughput", -INF, 6000, 20)],
                   params=[Param("optim.lr", "0.01")],            # the same value again: allowed
                   tags=[RunTag("hyperlab.node", "127.0.0.3"), RunTag("hyperlab.front", "1")])
    side.log_batch(a, metrics=[Metric("val/bpc", 2.5, 5000, 10)])  # a row logged before: not again, not the latest
    side.log_batch(b, metrics=[Metric("val/bpc", 3.0, 5500, 10), Metric("val/bpc", 3.5, 5500, 10)])  # value breaks the tie
    side.log_batch(b, tags=[RunTag("mlflow.runName", "renamed")])
    side.set_status(a, "FINISHED", end_time=9000, ended=True)
    side.set_status(b, "KILLED", end_time=9500, ended=True)
    side.set_status(b, "RUNNING")  # reopened by a resumed search
    side.log_batch(b, metrics=[Metric("val/bpc", 2.9, 9600, 30)])


def _rows(uri):
    """Every row of every table, run ids replaced by the run's name order, sorted."""
    path = uri.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        runs = conn.execute("SELECT run_uuid FROM runs ORDER BY start_time").fetchall()
        names = {run_id: f"run{i}" for i, (run_id,) in enumerate(runs)}
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for table in sorted(tables):
            rows = []
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                text = []
                for value in row:
                    if isinstance(value, str):
                        for run_id, name in names.items():
                            value = value.replace(run_id, name)
                    text.append(value)
                rows.append(tuple(text))
            out[table] = sorted(rows, key=repr)
    return out


def test_the_writer_leaves_the_rows_mlflows_store_leaves(_empty_store, tmp_path):
    client_uri, sql_uri = _stores(_empty_store, tmp_path)
    ids = [get_or_create_experiment(MlflowClient(uri), "search") for uri in (client_uri, sql_uri)]
    assert ids[0] == ids[1]
    _story(ClientRunWriter(MlflowClient(client_uri)), ids[0])
    writer = mlflow_sql.RunWriter.open(sql_uri)
    _story(writer, ids[1])
    writer.close()
    client_rows, sql_rows = _rows(client_uri), _rows(sql_uri)
    for table in ("experiments", "experiment_tags"):  # artifact locations name the store's folder
        client_rows.pop(table), sql_rows.pop(table)
    assert {t: len(r) for t, r in sql_rows.items() if r} == {t: len(r) for t, r in client_rows.items() if r}
    for table in client_rows:
        if table == "runs":  # the artifact folders differ by the store's folder only
            for rows in (sql_rows, client_rows):
                rows[table] = [tuple(v.replace(str(tmp_path), "") if isinstance(v, str) else v for v in r)
                               for r in rows[table]]
        assert sql_rows[table] == client_rows[table], table
    # and MLflow reads what the writer wrote
    client = MlflowClient(sql_uri)
    run = client.search_runs([ids[1]], "tags.`mlflow.runName` = 't00 h16'")[0]
    assert run.data.metrics["val/bpc"] == 2.0 and run.data.params == {"model.hidden_size": "16", "optim.lr": "0.01"}
    assert run.info.status == "FINISHED" and run.info.end_time == 9000 and run.data.tags["mlflow.user"] == "ann"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/bpc")] == [2.5, 2.0, 1.5]


def test_refusals_are_mlflows(mlflow_store):
    experiment_id = get_or_create_experiment(MlflowClient(mlflow_store), "search")
    writer = mlflow_sql.RunWriter.open(mlflow_store)
    run_id = writer.create_run(experiment_id, "t00", {}, 1000)
    writer.log_batch(run_id, params=[Param("optim.lr", "0.01")])
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        writer.log_batch(run_id, metrics=[Metric("val/bpc", 1.0, 1, 1)], params=[Param("optim.lr", "0.02")])
    assert MlflowClient(mlflow_store).get_run(run_id).data.metrics == {}  # all or nothing
    with pytest.raises(MlflowException, match="not found"):
        writer.log_batch("0" * 32, metrics=[Metric("val/bpc", 1.0, 1, 1)])
    with pytest.raises(MlflowException):
        writer.log_batch(run_id, metrics=[Metric("", 1.0, 1, 1)])  # MLflow's own validation
    MlflowClient(mlflow_store).delete_run(run_id)
    with pytest.raises(MlflowException, match="active"):
        writer.set_status(run_id, "FINISHED", ended=True)


def test_another_schema_or_store_is_written_by_the_client(mlflow_store, monkeypatch, tmp_path):
    assert mlflow_sql.RunWriter.open(mlflow_store) is not None
    assert mlflow_sql.RunWriter.open("http://127.0.0.1:5000") is None
    assert mlflow_sql.RunWriter.open(f"sqlite:///{tmp_path / 'absent.db'}") is None
    monkeypatch.setattr(mlflow_sql, "TESTED_SCHEMAS", frozenset())
    assert mlflow_sql.RunWriter.open(mlflow_store) is None


def test_the_store_is_read_while_a_commit_holds_it(_empty_store, tmp_path):
    """The writer puts the store in write-ahead-log mode with commits that do not wait for the disk:
    ``hyperlab list`` (the read-only reader) reads the last committed runs while the writer holds the
    database exclusively, as a commit does, where a rollback journal makes it wait (30 s, then fail)."""
    [uri] = _stores(_empty_store, tmp_path)[1:]
    db = tmp_path / "sql.db"
    experiment = get_or_create_experiment(MlflowClient(uri), "search")
    writer = mlflow_sql.RunWriter.open(uri)
    run_id = writer.create_run(experiment, "t00", {"hyperlab.role": "trial"})
    assert writer._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    writer._conn.execute("BEGIN EXCLUSIVE")  # the lock a commit takes, with a change not yet committed
    writer._conn.execute("UPDATE runs SET status = 'FAILED' WHERE run_uuid = ?", (run_id,))
    rows = mlflow_sql.runs_with_tag(db, "search", "hyperlab.role", "trial")
    assert list(rows["run_id"]) == [run_id] and list(rows["status"]) == ["RUNNING"]
    writer._conn.execute("COMMIT")
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    writer.close()
