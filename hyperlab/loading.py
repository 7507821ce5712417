"""A trained model from its MLflow run, for a ``hyperlab train`` run and a search trial alike::

    import hyperlab
    model = hyperlab.load_model("3f9c2a")            # a run id, or an unambiguous prefix of one
    model, config = hyperlab.load_run("3f9c2a")     # with its training config

The run's ``checkpoint/model.pt`` (weights only, read with ``weights_only``: no code runs) and its
``config.yaml`` are downloaded from the tracking store (a local store or a remote server), the model is
rebuilt from the config and the weights checked against it. The tracking URI defaults as everywhere in
hyperlab: ``$MLFLOW_TRACKING_URI``, else ``hyperlab-runs/mlflow.db``.
"""

from __future__ import annotations

import tempfile
from typing import Any


def load_run(run: Any, tracking_uri: str | None = None, data_dir: str | None = None, device: str = "cpu"):
    """(model in eval mode, TrainConfig) of ``run``: a run id, a prefix of one, or an MLflow ``Run``."""
    from hyperlab.config_io import load_yaml
    from hyperlab.errors import ConfigError
    from hyperlab.tracking import read, runs
    from hyperlab.tracking.store import resolve_tracking_uri
    from hyperlab.training.config import TrainConfig
    from hyperlab.training.loop import load_model as load_checkpoint

    uri = resolve_tracking_uri(tracking_uri)
    run_id = read.resolve_run_id(getattr(getattr(run, "info", None), "run_id", None) or str(run), uri)
    with tempfile.TemporaryDirectory(prefix="hyperlab-run-") as tmp:
        checkpoint_dir, config_path = runs.download_run_files(uri, run_id, tmp)
        try:
            config = load_yaml(TrainConfig, config_path)
        except ConfigError as err:  # the downloaded copy's path means nothing to the user
            raise ConfigError(f"run {run_id}: config.yaml", err.problems) from None
        model = load_checkpoint(checkpoint_dir, config, data_dir, device=device, where=f"run {run_id}")
    return model, config


def load_model(run: Any, tracking_uri: str | None = None, data_dir: str | None = None, device: str = "cpu"):
    """The model of ``run`` (see ``load_run``), in eval mode."""
    return load_run(run, tracking_uri, data_dir, device)[0]
