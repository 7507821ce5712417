"""Reading searches from MLflow; also the helpers that write stores in hyperlab's layout (the
other analysis tests import them)."""

from __future__ import annotations

import json
import sqlite3
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from hyperlab.analysis import load_search, load_search_meta
from hyperlab.errors import UserError
from hyperlab.tracking import layout, read


def log_search(client: mlflow.MlflowClient, name: str, objectives: dict[str, str], trials: list[dict],
               parent_tags: dict[str, str] | None = None) -> str:
    """Log a search: one experiment named ``name``, a parent run, and one child run per trial.

    A trial is {"params": {...}, "metrics": {...}, "fidelity": "complete"|"partial"|"failed"};
    the optuna trial number is its position. Returns the parent run id.
    """
    experiment = client.create_experiment(name)
    tags = {layout.TAG_SEARCH: name, layout.TAG_ROLE: layout.ROLE_SEARCH,
            layout.TAG_OBJECTIVES: json.dumps(objectives), **(parent_tags or {})}
    parent = client.create_run(experiment, tags=tags).info.run_id
    for number, trial in enumerate(trials):
        fidelity = trial.get("fidelity", layout.COMPLETE)
        run = client.create_run(experiment, tags={
            layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_PARENT: parent, layout.TAG_SEARCH: name,
            layout.TAG_FIDELITY: fidelity, layout.TAG_OPTUNA_TRIAL: str(number)}).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(k, float(v), now, 1) for k, v in trial.get("metrics", {}).items()],
                         params=[Param(k, str(v)) for k, v in trial.get("params", {}).items()])
        client.set_terminated(run, layout.STATUS_OF_FIDELITY[fidelity])
    client.set_terminated(parent, "FINISHED")
    return parent


def client_for(tmp_path) -> tuple[mlflow.MlflowClient, str]:
    """A client on a fresh sqlite store in ``tmp_path`` and its tracking URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri), uri



OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}


def example_trials(seed: int, n: int) -> list[dict]:
    """n trials of a HyperLSTM-like search: int, float, bool and str params (one conditional),
    a quarter of them partial or failed."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        hidden, n_z = int(rng.choice([64, 128, 256])), int(rng.integers(2, 17))
        params = {"model.hidden_size": hidden, "model.n_z": n_z, "optim.lr": float(rng.uniform(1e-4, 1e-2)),
                  "model.layer_norm": bool(i % 2), "model.kind": "hyperlstm", "data.dataset": "ptb"}
        if i % 3 == 0:
            params["model.hyper_size"] = 32  # present in some trials only
        fidelity = "complete" if i % 4 else ("partial" if i % 8 else "failed")
        metrics = {"model/n_params": 4 * hidden * hidden + 1000 * n_z,
                   "val/bpc": 2.5 - np.log(hidden) / 5 + float(rng.normal(0, 0.05))}
        trials.append({"params": params, "metrics": metrics, "fidelity": fidelity})
    return trials


_SHARED: dict[str, tuple] = {}


def shared_store(tmp_path_factory) -> tuple[mlflow.MlflowClient, str]:
    """One store for every analysis test module (building a sqlite schema takes seconds): searches
    alpha (24 trials) and beta (16), same space hash; gamma (3 trials, the first one deleted, and
    a fourth still running without metrics)."""
    if "store" not in _SHARED:
        client, uri = client_for(tmp_path_factory.mktemp("store"))
        log_search(client, "alpha", OBJECTIVES, example_trials(0, 24), parent_tags={"hyperlab.space_hash": "h1"})
        log_search(client, "beta", OBJECTIVES, example_trials(1, 16), parent_tags={"hyperlab.space_hash": "h1"})
        log_search(client, "gamma", OBJECTIVES, example_trials(2, 3))
        client.delete_run(load_search("gamma", uri)["run_id"].iloc[0])  # optuna trial 0
        experiment = client.get_experiment_by_name("gamma").experiment_id
        parent = load_search_meta("gamma", uri).parent_run_id
        client.create_run(experiment, tags={layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_PARENT: parent,
                                            layout.TAG_OPTUNA_TRIAL: "3"})  # still running: no fidelity tag
        _SHARED["store"] = client, uri
    return _SHARED["store"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


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
    slow = read.read_trials_with_client(name, uri).sort_values("run_id").reset_index(drop=True)
    assert sorted(fast.columns) == sorted(slow.columns)
    pd.testing.assert_frame_equal(fast[sorted(fast.columns)], slow[sorted(fast.columns)], check_dtype=False)


def test_deleted_runs_are_left_out_and_running_ones_kept(store):
    _, uri = store
    assert len(read.read_trials_with_client("gamma", uri)) == 3
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


def test_unknown_sqlite_schema_falls_back_to_the_client(store, monkeypatch):
    _, uri = store
    fast = load_search("alpha", uri)

    def unknown_schema(*args):
        raise sqlite3.OperationalError("no such table: latest_metrics")

    monkeypatch.setattr(read, "_sqlite_runs", unknown_schema)
    assert read.list_searches(uri) == ["alpha", "beta", "gamma"]
    slow = load_search("alpha", uri)
    pd.testing.assert_frame_equal(fast, slow[fast.columns], check_dtype=False)


@pytest.mark.slow
def test_ten_thousand_runs_load_fast_and_equal_the_client(tmp_path):
    import importlib.util
    import time
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "pareto_speed.py"
    spec = importlib.util.spec_from_file_location("pareto_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    uri = bench.build_store(tmp_path / "mlflow.db", 10_000)
    start = time.perf_counter()
    fast = read.read_trials(bench.NAME, uri)
    elapsed = time.perf_counter() - start
    slow = read.read_trials_with_client(bench.NAME, uri)
    assert len(fast) == len(slow) == 10_000 and elapsed < 3.0
    fast, slow = (df.sort_values("run_id").reset_index(drop=True) for df in (fast, slow))
    pd.testing.assert_frame_equal(fast, slow[fast.columns], check_dtype=False)
