"""Reading searches from MLflow; also the helpers that write stores in hyperlab's layout (the
other analysis tests import them)."""

from __future__ import annotations

import json
import time

import mlflow
from mlflow.entities import Metric, Param

from hyperlab.tracking import layout


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

