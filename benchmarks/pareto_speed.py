"""How fast the analysis layer is.

1. Pareto ranks plus hypervolume of 100,000 random two-objective points (target: well under 1 s).
2. Loading a 10,000-trial search from a sqlite MLflow store, with hyperlab's reader (direct SQL)
   and with MLflow's own client (``MlflowClient.search_runs``, paged) for comparison.

The store is built once (``--store DIR``, default a folder in the system temp dir) and reused:
an experiment and parent run through MlflowClient, then the trial runs bulk-inserted with MLflow's
own ORM tables in one transaction (logging 10,000 runs one by one through the client takes minutes).

    python benchmarks/pareto_speed.py [--points 100000] [--runs 10000] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from hyperlab.analysis import hypervolume, non_dominated_ranks
from hyperlab.tracking import layout, load_search

OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}
NAME = "bench"


def time_front_and_hypervolume(n_points: int) -> float:
    points = np.random.default_rng(0).random((n_points, 2))
    start = time.perf_counter()
    ranks = non_dominated_ranks(points)
    volume = hypervolume(points, (1.0, 1.0), ["min", "min"])
    elapsed = time.perf_counter() - start
    print(f"front + hypervolume of {n_points:,} points: {elapsed:.3f} s "
          f"({(ranks == 1).sum()} on the front, {ranks.max()} fronts, hypervolume {volume:.6f})")
    return elapsed


def build_store(db: Path, n_runs: int) -> str:
    """A sqlite store with one search of ``n_runs`` trials in hyperlab's layout."""
    import mlflow
    import sqlalchemy
    from mlflow.store.tracking.dbmodels import models

    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(NAME)
    parent = client.create_run(experiment_id, tags={layout.TAG_SEARCH: NAME, layout.TAG_ROLE: layout.ROLE_SEARCH,
                                                    layout.TAG_OBJECTIVES: json.dumps(OBJECTIVES)}).info.run_id
    client.set_terminated(parent, "FINISHED")
    rows = trial_rows(n_runs, int(experiment_id), client.get_experiment(experiment_id).artifact_location, parent)
    tables = {"runs": models.SqlRun, "tags": models.SqlTag, "params": models.SqlParam,
              "latest_metrics": models.SqlLatestMetric, "metrics": models.SqlMetric}
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as conn:  # one transaction: MLflow's own tables, rows as its store writes them
        for name, model in tables.items():
            conn.execute(sqlalchemy.insert(model.__table__), rows[name])
    engine.dispose()
    return uri


def trial_rows(n_runs: int, experiment_id: int, artifacts: str, parent: str) -> dict[str, list[dict]]:
    """Rows of the runs, tags, params, latest_metrics and metrics tables for ``n_runs`` trials."""
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    rows = {name: [] for name in ("runs", "tags", "params", "latest_metrics", "metrics")}
    for number in range(n_runs):
        run_id = uuid.uuid4().hex
        fidelity = layout.FIDELITIES[int(rng.choice(3, p=[0.8, 0.15, 0.05]))]
        rows["runs"].append(dict(run_uuid=run_id, name=f"trial-{number}", source_type="UNKNOWN", source_name="",
                                 entry_point_name="", user_id="bench", status=layout.STATUS_OF_FIDELITY[fidelity],
                                 start_time=now + number, end_time=now + number + 1000, deleted_time=None,
                                 source_version="", lifecycle_stage="active",
                                 artifact_uri=f"{artifacts}/{run_id}/artifacts", experiment_id=experiment_id))
        tags = {layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_PARENT: parent, layout.TAG_SEARCH: NAME,
                layout.TAG_FIDELITY: fidelity, layout.TAG_OPTUNA_TRIAL: str(number)}
        rows["tags"] += [dict(key=k, value=v, run_uuid=run_id) for k, v in tags.items()]
        hidden, n_z = int(rng.choice([256, 512, 1000])), int(rng.integers(2, 65))
        params = {"model.hidden_size": hidden, "model.n_z": n_z, "model.hyper_size": 128,
                  "model.layer_norm": bool(number % 2), "optim.lr": float(rng.uniform(1e-4, 1e-2)), "model.kind": "hyperlstm"}
        rows["params"] += [dict(key=k, value=str(v), run_uuid=run_id) for k, v in params.items()]
        metrics = {"model/n_params": 4.0 * hidden * (hidden + 50) + 12 * n_z * (hidden + 128),
                   "val/bpc": 1.2 + 300 / hidden + float(rng.normal(0, 0.05)), "train/loss": float(rng.random())}
        for k, v in metrics.items():
            row = dict(key=k, value=v, timestamp=now, step=1, is_nan=False, run_uuid=run_id)
            rows["latest_metrics"].append(row)
            rows["metrics"].append(row)
    return rows


def time_loading(store_dir: Path, n_runs: int) -> tuple[float, float]:
    db = store_dir / f"mlflow-{n_runs}.db"
    if not db.exists():
        store_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build_store(db, n_runs)
        print(f"built a store of {n_runs:,} trial runs in {time.perf_counter() - start:.1f} s: {db}")
    uri = f"sqlite:///{db}"
    start = time.perf_counter()
    df = load_search(NAME, uri)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    raw = _client_trials(uri)
    slow = time.perf_counter() - start
    assert len(df) == len(raw) == n_runs, (len(df), len(raw))
    print(f"load_search of {n_runs:,} runs (direct SQL): {fast:.2f} s; "
          f"MlflowClient.search_runs, paged: {slow:.2f} s")
    return fast, slow


def _client_trials(uri: str) -> list:
    """The trial runs through MLflow's own client, paged as it allows."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME).experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([experiment], f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'",
                                  max_results=50_000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "hyperlab-bench")
    args = parser.parse_args()
    time_front_and_hypervolume(args.points)
    time_loading(args.store, args.runs)


if __name__ == "__main__":
    main()
