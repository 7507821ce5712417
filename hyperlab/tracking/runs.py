"""Log one training run to MLflow: params from a flat dict, metrics by step, the parameter report,
artifacts. ``hyperlab train`` and the search orchestration's trials both use these.

Every helper takes an ``MlflowClient`` and a run id (no fluent, process-global active run), so a Ray
worker can log into a run that another process created.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAMS_PER_BATCH = 100   # MLflow's limit on params in one log_batch call
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000      # MLflow's limit on a param value's length
PARAMETER_REPORT_ARTIFACT = "parameter_report.json"
CONFIG_ARTIFACT = "config.yaml"
CHECKPOINT_ARTIFACT_DIR = "checkpoint"


def client(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` (resolve and init it with ``tracking.store`` first)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def start_run(mlflow_client, experiment: str, run_name: str | None = None,
              tags: Mapping[str, str] | None = None) -> str:
    """Create a run (RUNNING) in ``experiment``, creating the experiment if needed (artifacts beside a
    sqlite store, see ``store.get_or_create_experiment``); returns the run's id."""
    from hyperlab.tracking.store import get_or_create_experiment

    experiment_id = get_or_create_experiment(mlflow_client, experiment)
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    return run.info.run_id


def param_values(flat: Mapping[str, Any]) -> dict[str, str]:
    """A flat dict's values as MLflow params take them (strings, at most ``MAX_PARAM_LENGTH`` long)."""
    return {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flat.items()}


def log_params(mlflow_client, run_id: str, flat: Mapping[str, Any]) -> None:
    """Log a flat dict (dotted keys, e.g. ``TrainConfig.flat()``) as params, in batches."""
    from mlflow.entities import Param

    params = [Param(key, value) for key, value in param_values(flat).items()]
    for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow should store as metrics: finite numbers. Left out: bools (``done``),
    strings (``outcome``), the ``step`` itself, and NaN and infinities (a diverged run's loss is told
    by its outcome tag, not by a NaN point that breaks every plot and comparison of the series)."""
    return {key: float(value) for key, value in metrics.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def log_metrics(mlflow_client, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """Log the finite numeric entries of one report at ``step`` (see ``numeric_metrics``: bools,
    strings, NaN and infinities are dropped), in as few calls as MLflow allows."""
    log_metric_entries(mlflow_client, run_id, metric_entries(metrics, step))


def metric_entries(metrics: Mapping[str, Any], step: int) -> list:
    """MLflow ``Metric`` entries of one report's finite numbers at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in numeric_metrics(metrics).items()]


def log_metric_entries(mlflow_client, run_id: str, entries: list) -> None:
    for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=entries[start:start + MAX_METRICS_PER_BATCH])


REPORT_METRICS = ("model/n_params", "model/compression_ratio")
"""Of a parameter report (``model/...`` entries), what a run keeps as metrics (the objectives and the
runs table's columns); the rest become tags. Both are logged once, not at every evaluation."""


def split_parameter_report(metrics: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """One report's entries as (learning curves, parameter-report metrics, parameter-report tags)."""
    curves, report, tags = {}, {}, {}
    for key, value in metrics.items():
        if not key.startswith("model/"):
            curves[key] = value
        elif key in REPORT_METRICS:
            report[key] = value
        else:
            tags[key] = str(value)
    return curves, report, tags


def evaluation_entries(metrics: Mapping[str, Any], step: int, first: bool) -> tuple[list, dict[str, str]]:
    """One evaluation's MLflow metric entries and tags: the learning curves at ``step``, and with a run's
    ``first`` evaluation its parameter report (metrics at step 0, the rest as tags)."""
    curves, report_metrics, report_tags = split_parameter_report(metrics)
    entries = metric_entries(curves, step)
    if not first:
        return entries, {}
    return metric_entries(report_metrics, 0) + entries, report_tags


def log_parameter_report(mlflow_client, run_id: str, report: Mapping[str, Any]) -> None:
    """The full parameter report (whatever ``hyperlab.models.parameter_report`` gives) as a JSON artifact."""
    clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
             for key, value in report.items()}
    mlflow_client.log_text(run_id, json.dumps(clean, indent=1, default=str), PARAMETER_REPORT_ARTIFACT)


def log_config(mlflow_client, run_id: str, yaml_text: str) -> None:
    """The run's configuration as the ``config.yaml`` artifact."""
    mlflow_client.log_text(run_id, yaml_text, CONFIG_ARTIFACT)


def log_checkpoint(mlflow_client, run_id: str, checkpoint_dir: str | Path) -> None:
    """A checkpoint directory's files under the ``checkpoint/`` artifact folder."""
    mlflow_client.log_artifacts(run_id, str(checkpoint_dir), CHECKPOINT_ARTIFACT_DIR)


def set_tags(mlflow_client, run_id: str, tags: Mapping[str, str]) -> None:
    """Set (or overwrite) tags on a run."""
    from mlflow.entities import RunTag

    if tags:
        mlflow_client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def finish_run(mlflow_client, run_id: str, status: str = "FINISHED") -> None:
    """End the run: FINISHED, FAILED or KILLED."""
    mlflow_client.set_terminated(run_id, status)


def download_run_files(tracking_uri: str, run_id: str, dst: str | Path) -> tuple[Path, Path]:
    """Download a run's ``checkpoint/`` folder and ``config.yaml`` into ``dst``; returns their paths."""
    import mlflow

    from hyperlab.errors import UserError

    dst = Path(dst)
    try:
        ckpt = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT_DIR,
                                                   dst_path=str(dst), tracking_uri=tracking_uri)
        config = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG_ARTIFACT,
                                                     dst_path=str(dst), tracking_uri=tracking_uri)
    except Exception as err:  # MlflowException / OSError: unknown run or missing artifacts
        raise UserError(f"run {run_id!r} in {tracking_uri}: cannot download its "
                        f"{CHECKPOINT_ARTIFACT_DIR}/ and {CONFIG_ARTIFACT} artifacts ({err})") from None
    return Path(ckpt), Path(config)
