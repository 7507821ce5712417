"""The Ray Tune trial: the training core (``hyperlab.training.fit``) with Tune's report plugged in, and
its checkpoints kept by Optuna trial number on the search's storage (``trial_store``). Runs on a worker;
imports torch only there."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY
from hyperlab.search.trial_store import TrialCheckpoints

NODE_KEY = "trial/node"
"""The address of the node this trial's process runs on, and its process id: ``IP:PID``."""
RESUMED_FROM_KEY = "trial/resumed_from_step"
"""The step of the checkpoint this trial's process continued from (0: it started afresh)."""
EVALUATION_KEY = "evaluation"
"""The index (from 1) of a result's evaluation in its trial's schedule: what early stopping counts (Tune's
``training_iteration`` restarts when a trial restarts from its checkpoint)."""


class TrainingDiverged(RuntimeError):
    """The training loss or an evaluation metric became NaN or infinite: the trial fails with this
    reason (and is retried as configured)."""


def trial_overrides(config: dict) -> dict:
    """The suggested training-config overrides in a trial's config (without hyperlab's own keys)."""
    return {k: v for k, v in config.items() if k not in (N_PARAMS_KEY, OPTUNA_TRIAL_KEY)}


def train_trial(config: dict, *, base_config, objectives: tuple[str, ...], experiment_uri: str,
                data_dir: str | None = None) -> None:
    """Train one configuration from its latest checkpoint (if it has one); every evaluation's checkpoint
    is published before its metrics are reported, so a reported step can always be continued from."""
    import torch

    from hyperlab.training import fit

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    train_config = base_config.with_overrides(trial_overrides(config))
    number = int(config[OPTUNA_TRIAL_KEY])
    node = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
    checkpoints = TrialCheckpoints(experiment_uri)
    # the trainer's folder: local to this worker, outside Ray's trial folder (nothing rides along with it)
    workdir = Path(tempfile.mkdtemp(prefix=f"hyperlab-trial-{number:05d}-"))

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if metrics.get("outcome") == "diverged":
            return  # not a result: the trial fails below, with the reason
        metrics = {k: v for k, v in metrics.items() if _reportable(v)}
        metrics[EVALUATION_KEY] = math.ceil(metrics["step"] / train_config.schedule.eval_every)
        metrics[RESUMED_FROM_KEY], metrics[NODE_KEY] = resumed_step, node
        if metrics.pop("done", False):
            missing = [name for name in objectives if name not in metrics]
            if missing:  # Optuna would silently record the trial as pruned
                raise RuntimeError(f"the final report lacks the objectives {missing}")
            metrics[COMPLETE_KEY] = 1
        if checkpoint is not None and checkpoints.latest_name(number) != checkpoint.name:  # not the one resumed from
            checkpoints.publish(number, checkpoint)
        tune.report(metrics)

    try:
        resume_from = checkpoints.fetch_latest(number, workdir)
        resumed_step = int(resume_from.name.rpartition("-")[2]) if resume_from else 0
        result = fit(train_config, report, workdir=workdir, data_dir=data_dir, resume_from=resume_from)
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    if result.get("outcome") == "diverged":
        values = {k: v for k, v in result.items() if k.startswith(("train/", "val/", "test/"))}
        raise TrainingDiverged(f"diverged at step {result.get('step')}: {values}")


def _reportable(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str)
