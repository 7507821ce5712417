"""Tune callbacks on the driver: MLflow logging (through ``tracking.writer``) and a progress bar."""

from __future__ import annotations

from pathlib import Path

from ray import tune

import logging

from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY
from hyperlab.search.trainable import trial_overrides
from hyperlab.tracking import layout
from hyperlab.tracking.writer import SearchWriter

log = logging.getLogger(__name__)
_METRIC_PREFIXES = ("model/", "train/", "val/", "test/", "time/", "throughput")


class MlflowSearchCallback(tune.Callback):
    """Mirrors every trial into its own child run of the search's parent run, and keeps the parent's
    front, figures and hypervolume series current as trials finish.

    Tune pickles its callbacks with the experiment; this one holds only plain settings and opens the
    MLflow client in ``setup``, so a restored search reattaches to the same runs."""

    def __init__(self, tracking_uri: str, name: str, objectives: dict[str, str], tags: dict[str, str],
                 params: dict[str, object], artifacts: dict[str, str], reference_bounds: dict | None = None):
        self._settings = (tracking_uri, name, objectives, tags, params, artifacts, reference_bounds)
        self.writer: SearchWriter | None = None
        self._reporter = None

    def __getstate__(self):
        return {"_settings": self._settings, "writer": None, "_reporter": None}

    def setup(self, **info):
        from hyperlab.search.report import SearchReporter

        tracking_uri, name, objectives, tags, params, artifacts, reference_bounds = self._settings
        self.writer = SearchWriter(tracking_uri, name, objectives)
        self.writer.start(tags, params, artifacts)
        self._reporter = SearchReporter(self.writer, objectives, reference_bounds)

    def on_experiment_end(self, trials, **info):
        self.writer.close_orphans({trial.trial_id for trial in trials})
        self._reporter.update()
        self.writer.finish("FINISHED")

    def on_trial_start(self, iteration, trials, trial, **info):
        config = trial.config
        self.writer.start_trial(trial.trial_id, params=trial_overrides(config), tags={
            layout.TAG_OPTUNA_TRIAL: str(config.get(OPTUNA_TRIAL_KEY, "")),
            layout.TAG_N_PARAMS_SIZED: str(config.get(N_PARAMS_KEY, "")),
        })

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = int(result.get("step", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k.startswith(_METRIC_PREFIXES)}
        self.writer.log_metrics(trial.trial_id, metrics, step)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.writer.set_tags(trial.trial_id, {layout.TAG_CHECKPOINT: checkpoint.path})

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.writer.set_tags(trial.trial_id, {layout.TAG_RETRIES: trial.num_failures})

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get(COMPLETE_KEY):
            self.writer.end_trial(trial.trial_id, layout.COMPLETE, "completed")
        else:
            self.writer.end_trial(trial.trial_id, layout.PARTIAL, "stopped early")
        self._trial_ended()

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_text(trial)
        outcome = "diverged" if "TrainingDiverged" in error else "error"
        self.writer.end_trial(trial.trial_id, layout.FAILED, outcome, error=error)
        self._trial_ended()

    def _trial_ended(self):
        try:
            self._reporter.update()
        except Exception:  # a figure that fails to draw must not end the search; the runs are safe
            log.exception("could not update the search's front and figures")


def _error_text(trial) -> str:
    """The trial's error file (Tune writes it on the driver's disk first, then syncs it to storage)."""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            return Path(trial.error_file).read_text()
        text = trial.get_error()
    except Exception:  # storage may be gone; the run still gets a reason
        text = None
    return str(text or f"trial {trial.trial_id} failed ({trial.num_failures} failures)")


class ProgressCallback(tune.Callback):
    """A rich progress bar: trials finished out of the total, with running and failed counts."""

    def __init__(self, total: int, name: str):
        self._total, self._name = total, name
        self._progress = None

    def __getstate__(self):
        return {"_total": self._total, "_name": self._name, "_progress": None}

    def setup(self, **info):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        self._task = self._progress.add_task(self._name, total=self._total, status="")
        self._progress.start()

    def on_step_end(self, iteration, trials, **info):
        counts = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        status = (f"running {counts.get('RUNNING', 0)}  pending {counts.get('PENDING', 0)}  "
                  f"failed {counts.get('ERROR', 0)}")
        self._progress.update(self._task, completed=done, status=status)

    def on_experiment_end(self, trials, **info):
        self.on_step_end(0, trials)
        self._progress.stop()
