"""Run a search on Ray Tune: build the Tuner (fresh or restored), with Optuna as the searcher and
MLflow as the one writer on the driver."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from hyperlab import __version__
from hyperlab.errors import UserError
from hyperlab.metrics import direction
from hyperlab.search.callback import MlflowSearchCallback, ProgressCallback
from hyperlab.search import storage as files
from hyperlab.search.scheduler import PersistentASHA
from hyperlab.search.searcher import N_PARAMS_KEY, BudgetedOptunaSearch
from hyperlab.search.space import SearchSpace, dump
from hyperlab.search.trainable import train_trial
from hyperlab.tracking import layout
from hyperlab.tracking.writer import SearchWriter

MANIFEST = "hyperlab_search.json"  # beside Ray's experiment state: what `hyperlab resume` needs


@dataclass(frozen=True)
class SearchRun:
    """Everything a search run needs, resolved from the command line."""

    name: str
    space: SearchSpace
    base_config: object      # hyperlab.training.TrainConfig
    space_text: str          # the search-space file as the user wrote it
    tracking_uri: str
    storage: str             # Ray results: a local directory or a URI (s3://...)
    data_dir: str | None = None
    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None = all cores
    smoke_test: bool = False     # shrunk by --smoke-test (a resume shrinks it again)


def experiment_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def exists(storage: str, name: str) -> bool:
    return files.exists(experiment_path(storage, name))


def write_manifest(run: SearchRun) -> None:
    body = json.dumps({"name": run.name, "space": run.space_text, "tracking_uri": run.tracking_uri,
                       "data_dir": run.data_dir, "storage": run.storage, "smoke_test": run.smoke_test}, indent=1)
    files.write_bytes(f"{experiment_path(run.storage, run.name)}/{MANIFEST}", body.encode())


def read_manifest(storage: str, name: str) -> dict:
    where = f"{experiment_path(storage, name)}/{MANIFEST}"
    body = files.read_bytes(where)
    if body is None:
        raise UserError(f"no search named {name!r} under {storage} (looked for {where}); "
                        f"pass --storage if it was started with one")
    return json.loads(body)


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def init_ray(address: str | None, num_cpus: int | None) -> None:
    # Quiet defaults: hyperlab shows its own progress bar; Tune's tables and snapshot warnings are noise.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is the record, not CSV/TB
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def run_search(run: SearchRun, resume: bool = False, progress: bool = True):
    """Run (or resume) a search to the end; returns Tune's ResultGrid."""
    init_ray(run.address, run.num_cpus)
    trainable = _trainable(run)
    if resume:  # Tune restores the searcher and the callbacks (which reattach to their MLflow runs)
        # Unfinished trials continue from their checkpoints; failed ones already had their retries.
        tuner = tune.Tuner.restore(experiment_path(run.storage, run.name), trainable, resume_unfinished=True)
    else:
        callbacks = [JsonLoggerCallback(), MlflowSearchCallback(
            run.tracking_uri, run.name, run.space.objectives,
            tags={layout.TAG_CODE_VERSION: code_version(), layout.TAG_SPACE_HASH: run.space.space_hash(),
                  layout.TAG_STORAGE: experiment_path(run.storage, run.name),
                  layout.TAG_DATASET: run.base_config.data.dataset},
            params={k: v for k, v in run.base_config.flat().items() if k not in run.space.space},
            artifacts={layout.SEARCH_SPACE_ARTIFACT: run.space_text, "search_space.resolved.yaml": dump(run.space)},
            reference_bounds={"model/n_params": run.space.budget.max_params}
            if run.space.budget and "model/n_params" in run.space.objectives else None)]
        if progress:
            callbacks.append(ProgressCallback(run.space.trials, run.name))
        tuner = tune.Tuner(trainable, tune_config=_tune_config(run), run_config=_run_config(run, callbacks))
    try:
        return tuner.fit()
    except BaseException:
        SearchWriter(run.tracking_uri, run.name, run.space.objectives).finish_interrupted()
        raise


def _trainable(run: SearchRun):
    trainable = tune.with_parameters(train_trial, base_config=run.base_config, data_dir=run.data_dir,
                                     objectives=tuple(run.space.objectives))
    resources = run.space.resources
    return tune.with_resources(trainable, lambda config: resources.for_params(config.get(N_PARAMS_KEY, 0)))


def _tune_config(run: SearchRun) -> tune.TuneConfig:
    space = run.space
    searcher = BudgetedOptunaSearch(space, run.base_config, study_name=run.name, data_dir=run.data_dir)
    scheduler = None
    if space.early_stopping:
        rule = space.early_stopping
        schedule = run.base_config.schedule
        evaluations = -(-schedule.steps // schedule.eval_every)
        state_path = f"{experiment_path(run.storage, run.name)}/asha_state.pkl"
        scheduler = PersistentASHA(rule, mode=direction(rule.metric),
                                   max_evaluations=evaluations, state_path=state_path)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.trials,
                           max_concurrent_trials=space.concurrency, reuse_actors=True)


def _run_config(run: SearchRun, callbacks) -> tune.RunConfig:
    storage = run.storage if "://" in run.storage else os.path.abspath(run.storage)
    return tune.RunConfig(
        name=run.name, storage_path=storage, callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=run.space.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
