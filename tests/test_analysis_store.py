"""Reading searches from MLflow: hyperlab's reader against MLflow's own client, deleted and running runs,
unknown names, schemas it was not tested on, files that are no store."""

from __future__ import annotations

import sqlite3

import mlflow
import numpy as np
import pandas as pd
import pytest

from hyperlab.errors import UserError
from hyperlab.tracking import layout, load_search, load_search_meta, mlflow_sql, read

from conftest import OBJECTIVES, REPO, example_trials, shared_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


def client_trials(name: str, uri: str) -> pd.DataFrame:
    """The trial runs of a search as MLflow's own client returns them, in the reader's columns."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'", max_results=50_000)
    rows = [{"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
             "end_time": r.info.end_time, **{f"params.{k}": v for k, v in r.data.params.items()},
             **{f"metrics.{k}": float(v) for k, v in r.data.metrics.items()},
             **{f"tags.{k}": v for k, v in r.data.tags.items()}} for r in runs]
    frame = pd.DataFrame(rows)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame.sort_values("run_id").reset_index(drop=True)


def test_load_search_casts_params_and_metrics(store):
    _, uri = store
    df = load_search("alpha", uri)
    assert len(df) == 24 and df["optuna_trial"].tolist() == list(range(24))
    assert df["model.hidden_size"].dtype == "int64" and df["model.n_z"].dtype == "int64"
    assert df["optim.lr"].dtype == "float64" and df["model.layer_norm"].dtype == "bool"
    assert df["model.kind"].tolist() == ["hyperlstm"] * 24
    assert df["model.hyper_size"].dtype == "Int64" and df["model.hyper_size"].notna().sum() == 8
    assert df["model/n_params"].dtype == "float64"
    trials = example_trials(0, 24)
    assert df["val/bpc"].tolist() == [t["metrics"]["val/bpc"] for t in trials]
    assert df["optim.lr"].tolist() == [t["params"]["optim.lr"] for t in trials]
    assert df["model.layer_norm"].tolist() == [t["params"]["model.layer_norm"] for t in trials]
    assert df["fidelity"].value_counts().to_dict() == {"complete": 18, "partial": 3, "failed": 3}
    status = df.groupby("fidelity")["status"].unique().map(list).to_dict()
    assert status == {"complete": ["FINISHED"], "partial": ["KILLED"], "failed": ["FAILED"]}
    assert (df["end_time"] >= df["start_time"]).all()


@pytest.mark.parametrize("name", ["alpha", "gamma"])
def test_sqlite_reader_equals_mlflow_client(store, name):
    _, uri = store
    fast = read.read_trials(name, uri).sort_values("run_id").reset_index(drop=True)
    slow = client_trials(name, uri)
    assert sorted(fast.columns) == sorted(slow.columns)
    pd.testing.assert_frame_equal(fast[sorted(fast.columns)], slow[sorted(fast.columns)], check_dtype=False)


def test_deleted_runs_are_left_out_and_running_ones_kept(store):
    _, uri = store
    assert len(client_trials("gamma", uri)) == 3 and len(read.read_trials("gamma", uri)) == 3
    gamma = load_search("gamma", uri)
    assert gamma["optuna_trial"].tolist() == [1, 2, 3]
    assert gamma["fidelity"].tolist() == ["complete", "complete", "running"]
    assert np.isnan(gamma["val/bpc"].iloc[2])


def test_search_meta(store):
    client, uri = store
    meta = load_search_meta("beta", uri)
    assert meta.objectives == OBJECTIVES and meta.status == "FINISHED"
    assert client.get_run(meta.parent_run_id).data.tags[layout.TAG_SEARCH] == "beta"
    assert meta.tags["hyperlab.space_hash"] == "h1" and meta.wall_time_s >= 0
    assert read.list_searches(uri) == ["alpha", "beta", "gamma"]


def test_unknown_search_lists_known_names(store):
    _, uri = store
    with pytest.raises(UserError, match=r"no search named 'delta'.*known searches: alpha, beta, gamma"):
        load_search("delta", uri)
    with pytest.raises(UserError, match="known searches: alpha, beta, gamma"):
        load_search_meta("delta", uri)


def test_a_schema_not_tested_is_read_through_the_client(store, monkeypatch):
    _, uri = store
    fast = load_search("alpha", uri)
    monkeypatch.setattr(mlflow_sql, "TESTED_SCHEMAS", frozenset())
    assert mlflow_sql.runs_with_tag(read.sqlite_path(uri), "alpha", layout.TAG_ROLE, layout.ROLE_TRIAL) is None
    assert read.list_searches(uri) == ["alpha", "beta", "gamma"]
    slow = load_search("alpha", uri)
    pd.testing.assert_frame_equal(fast, slow[fast.columns], check_dtype=False)


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100, b"SQLite format 3\x00" + b"\x01" * 4000])
def test_a_file_that_is_no_mlflow_store_is_one_clear_error(tmp_path, content):
    db = tmp_path / "mlflow.db"
    db.write_bytes(content)
    with pytest.raises(UserError, match=r"mlflow\.db is not (a readable )?an? MLflow store|is not a readable MLflow store"):
        read.list_searches(f"sqlite:///{db}")


def test_a_sqlite_file_of_another_program_is_no_store(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(UserError, match="is not an MLflow store"):
        load_search("alpha", f"sqlite:///{db}")


@pytest.mark.slow
def test_ten_thousand_runs_equal_the_client(tmp_path):
    """The benchmark's store (benchmarks/pareto_speed.py times both readers on it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pareto_speed", REPO / "benchmarks" / "pareto_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    uri = bench.build_store(tmp_path / "mlflow.db", 10_000)
    fast = read.read_trials(bench.NAME, uri).sort_values("run_id").reset_index(drop=True)
    slow = client_trials(bench.NAME, uri)
    assert len(fast) == len(slow) == 10_000
    pd.testing.assert_frame_equal(fast, slow[fast.columns], check_dtype=False)
