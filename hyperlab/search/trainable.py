"""The Ray Tune trial: the training core (``hyperlab.training.fit``) with Tune's report and
checkpoints plugged in. Runs on a worker; imports torch only there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray import tune

from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY


class TrainingDiverged(RuntimeError):
    """The training loss or an evaluation metric became NaN or infinite: the trial fails with this
    reason (and is retried as configured)."""


def trial_overrides(config: dict) -> dict:
    """The suggested training-config overrides in a trial's config (without hyperlab's own keys)."""
    return {k: v for k, v in config.items() if k not in (N_PARAMS_KEY, OPTUNA_TRIAL_KEY)}


def train_trial(config: dict, *, base_config, objectives: tuple[str, ...], data_dir: str | None = None) -> None:
    """Train one configuration; every evaluation is reported to Tune with its checkpoint."""
    import torch

    from hyperlab.training import fit

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    train_config = base_config.with_overrides(trial_overrides(config))
    workdir = Path(tune.get_context().get_trial_dir()) / "work"

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        metrics = dict(metrics)
        if metrics.get("outcome") == "diverged":
            return  # not a result: the trial fails below, with the reason
        metrics = {k: v for k, v in metrics.items() if _reportable(v)}
        if metrics.pop("done", False):
            missing = [name for name in objectives if name not in metrics]
            if missing:  # Optuna would silently record the trial as pruned
                raise RuntimeError(f"the final report lacks the objectives {missing}")
            metrics[COMPLETE_KEY] = 1
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        result = fit(train_config, report, workdir=workdir, data_dir=data_dir)
    else:
        with checkpoint.as_directory() as resume_from:
            result = fit(train_config, report, workdir=workdir, data_dir=data_dir,
                         resume_from=Path(resume_from))
    if result.get("outcome") == "diverged":
        values = {k: v for k, v in result.items() if k.startswith(("train/", "val/", "test/"))}
        raise TrainingDiverged(f"diverged at step {result.get('step')}: {values}")


def _reportable(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str)
