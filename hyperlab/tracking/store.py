"""Where runs are stored: the tracking URI, resolved once, and the store's schema created once."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR = Path("hyperlab-runs")
"""Embedded default home of everything a search writes: MLflow's sqlite store and Ray's results."""


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3's UI opens an experiment of this kind on its runs (model training), not on GenAI traces."""


def default_tracking_uri() -> str:
    return f"sqlite:///{(RUNS_DIR / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The flag, else $MLFLOW_TRACKING_URI, else the embedded sqlite store under hyperlab-runs/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (query string dropped); None for others."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def init_store(uri: str) -> str:
    """Create the store's schema now, from one process, before anything writes concurrently
    (first-time initialisation of a sqlite store from several processes races)."""
    import mlflow

    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


def get_or_create_experiment(client, name: str, tags: dict[str, str] | None = None) -> str:
    """The experiment's id, creating it if needed. With a sqlite store the artifacts go beside the
    database (``<db dir>/artifacts/<name>``), not into ``./mlruns`` of whatever directory ran it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag was set
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    db = sqlite_path(client.tracking_uri)
    location = (db.parent / "artifacts" / name).resolve().as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={**(tags or {}), EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:  # another process created it between the look-up and here
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
