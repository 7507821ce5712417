"""Run a search on Ray Tune: connect, check, claim the name, build the Tuner (fresh or restored) with
the Optuna study as its searcher and MLflow as the one record on the driver, and end the record as the
run ended (FINISHED, or KILLED and resumable).

Exactly once, whatever stops the driver: the search's lease makes one driver run it; the Optuna study
(a database) records every suggestion the moment it is made, so one made after Ray's last snapshot is
adopted on resume, not made again; every trial continues from its latest checkpoint on the storage;
every MLflow run is found again by its trial's number.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from hyperlab import __version__
from hyperlab.errors import UserError
from hyperlab.search import cluster, storage
from hyperlab.search.callback import RECORDERS, MlflowSearchCallback, ProgressCallback, SearchRecorder
from hyperlab.search.home import SearchHome, prepare_local_folders
from hyperlab.search.lease import Lease
from hyperlab.search.scheduler import PersistentASHA
from hyperlab.search.searcher import (
    N_PARAMS_KEY,
    StudySearcher,
    all_trials_ended,
    create_study,
    failed_trials,
    seal_studies,
    tell_ended,
    wait_for_tells,
)
from hyperlab.search.sigterm import ON_TERMINATE, sigterm_ends_cleanly, unless_terminating
from hyperlab.search.space import SearchSpace, dump, size_range
from hyperlab.search.study_storage import lease_url
from hyperlab.search.trainable import train_trial
from hyperlab.tracking import layout

EARLY_STOPPING_STATE = "early_stopping.json"  # the rungs, beside Ray's experiment state
INTERRUPTED_FLUSH_S = 60.0


@dataclass(frozen=True)
class Outcome:
    complete: bool   # every trial ran to an end; False: interrupted (resumable)
    errors: int      # trials that failed


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def ray_state_exists(experiment_path: str) -> bool:
    """Whether Ray Tune ever snapshotted this experiment (a search that really started)."""
    fs, path = storage.filesystem(experiment_path)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return False
    return any(e.base_name.startswith("experiment_state") for e in entries)


def search_started(home: SearchHome) -> bool:
    """Whether the search really started: Ray snapshotted it, or MLflow holds a run of one of its trials
    (a parent run alone is what a start that failed before its first trial leaves: never started)."""
    from hyperlab.tracking import read

    if ray_state_exists(home.experiment_path):
        return True
    if read.search_status(home.tracking_uri, home.name) is None:
        return False
    return len(read.read_trials(home.name, home.tracking_uri)) > 0


def run_search(home: SearchHome, space: SearchSpace, base_config, space_text: str, resume: bool = False,
               progress: bool = True, trainable=None) -> Outcome:
    """Run (or resume) a search to its end or until it is interrupted. ``trainable`` replaces the
    training of each trial (``benchmarks/search_overhead.py`` times the driver with a null one)."""
    with sigterm_ends_cleanly():  # the command line did it first; here for callers from Python
        return _run_search(home, space, base_config, space_text, resume, progress, trainable)


def _run_search(home: SearchHome, space: SearchSpace, base_config, space_text: str, resume: bool, progress: bool,
                trainable) -> Outcome:
    cluster.connect(home.address, home.num_cpus, home.num_gpus)
    smallest, _, largest = size_range(space, base_config, home.data_dir)
    cluster.check_resources(space.resources.for_params(largest), space.resources.for_params(smallest))
    cluster.check_storage(home.experiment_path)
    prepare_local_folders(home)  # only now: a start refused above leaves nothing behind
    lease = Lease(lease_url(home.optuna_storage), home.name)
    lease.acquire()
    ON_TERMINATE.append(lease.release)
    try:
        lease.keep_alive()
        started = search_started(home)
        if resume and not started:
            raise UserError(f"search {home.name!r} never started (no Ray state under {home.experiment_path}); "
                            f"start it with `hyperlab search FILE --name {home.name}`")
        if not resume and started:
            raise UserError(f"a search named {home.name!r} already exists (under {home.storage}): "
                            f"`hyperlab resume {home.name}` continues it, --name starts another")
        if not resume:
            _fresh_study(space, home)
        bounds = reference_bounds(space, base_config, home.data_dir, largest)
        return _run(home, space, base_config, space_text, resume, progress, trainable, bounds)
    finally:
        ON_TERMINATE.remove(lease.release)
        lease.release()


def _fresh_study(space: SearchSpace, home: SearchHome) -> None:
    """The search's study, empty: one left by a start that never reached Ray's first snapshot goes."""
    import optuna

    from hyperlab.search.study_storage import open_storage

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=home.name, storage=open_storage(home.optuna_storage))
    create_study(space, home.name, home.optuna_storage)


def reference_bounds(space: SearchSpace, base_config, data_dir: str | None, largest: int) -> dict[str, float]:
    """The search's hypervolume reference where the space fixes it before any trial: the most parameters
    the space and budget allow, and for bits per character a uniform guess over the vocabulary (log2 of
    its size). Accuracy's is 0 (``NATURAL_WORST``); an objective with no known worst (a handwriting
    log-loss) gets its reference from the first complete trials."""
    from hyperlab.training.data_cache import data_shape

    bounds = {"model/n_params": float(largest)} if "model/n_params" in space.objectives else {}
    bpc = [name for name in space.objectives if name.endswith("/bpc")]
    vocab = data_shape(space.task, base_config.data.dataset, data_dir).vocab_size if bpc else None
    bounds.update({name: math.log2(vocab) for name in bpc if vocab})
    return bounds


def _run(home: SearchHome, space: SearchSpace, base_config, space_text: str, resume: bool, progress: bool,
         trainable=None, bounds: dict[str, float] | None = None) -> Outcome:
    recorder = SearchRecorder(home.tracking_uri, home.name, space.objectives, space.trials, home.experiment_path,
                              bounds)
    RECORDERS[home.name] = recorder

    def close_record():
        recorder.finish(complete=False)
        if recorder.ended == "KILLED":  # not when the search had ended FINISHED as the signal came
            print("hyperlab: the search ends KILLED (`hyperlab resume` continues it)", file=sys.stderr)

    ON_TERMINATE[:0] = [seal_studies, close_record]  # the study first: a trial told now would miss its MLflow end
    try:
        recorder.start(tags={layout.TAG_NOTE: description(home, space, base_config),
                             layout.TAG_CODE_VERSION: code_version(), layout.TAG_SPACE_HASH: space.space_hash(),
                             layout.TAG_STORAGE: home.experiment_path, layout.TAG_DATASET: base_config.data.dataset},
                       params={k: v for k, v in base_config.flat().items() if k not in space.space},
                       artifacts={layout.SEARCH_SPACE_ARTIFACT: space_text, "search_space.resolved.yaml": dump(space),
                                  layout.MANIFEST_ARTIFACT: json.dumps(home.manifest(), indent=1)},
                       resumed=resume)
        trainable = _trainable(home, space, base_config, trainable)
        if home.address is None:  # the local Ray's workers share this machine's build
            build_kernels_first(space, base_config)
        if resume:  # Tune restores the searcher and the scheduler; unfinished trials continue from checkpoints
            recorder.failed_in_study = failed_trials(home.name, home.optuna_storage)
            tuner = tune.Tuner.restore(home.experiment_path, trainable, resume_unfinished=True)
        else:
            # MLflow is the record; Tune's JSON logger stays (its ResultGrid reads each trial's result.json)
            callbacks = [JsonLoggerCallback(), MlflowSearchCallback(home.name)]
            if progress:
                callbacks.append(ProgressCallback(space.trials, home.name))
            tuner = tune.Tuner(trainable, tune_config=_tune_config(home, space, base_config),
                               run_config=_run_config(home, space, callbacks))
        try:
            tuner.fit()
        except BaseException:
            with _signals_held():  # the record is closed even if Ctrl-C comes again
                unless_terminating()
                recorder.finish(complete=False)
            raise
        with _signals_held():
            unless_terminating()  # a SIGTERM that also stopped Ray's processes ends fit: the search is KILLED
            wait_for_tells(home.name)  # Optuna's record complete before the search's end is
            tell_ended(home.name, home.optuna_storage, space.objectives, recorder.ended_before)  # ends a kill cut off
            complete = recorder.all_ended and all_trials_ended(home.name, home.optuna_storage, space.trials)
            unless_terminating()
            recorder.finish(complete)
        return Outcome(complete=complete, errors=recorder.errors)
    finally:
        RECORDERS.pop(home.name, None)
        ON_TERMINATE.remove(seal_studies)
        ON_TERMINATE.remove(close_record)


def description(home: SearchHome, space: SearchSpace, base_config) -> str:
    """The parent run's description in the MLflow UI: what the search is, where its figures are."""
    objectives = ", ".join(f"{name} ({d})" for name, d in space.objectives.items())
    varied = ", ".join(f"`{key}`" for key in space.space)
    return (f"hyperlab search **{home.name}**: {space.trials} trials of `{space.model}` ({space.task}) on "
            f"`{base_config.data.dataset}`, varying {varied}; {space.sampler.name} sampler, seed {space.sampler.seed}. "
            f"Objectives: {objectives}.\n\n"
            f"Figures and front (Artifacts, `{layout.REPORT_DIR}/`): `{layout.TRADEOFF_HTML_ARTIFACT}` (interactive "
            f"trade-off, works offline), `{layout.TRADEOFF_PNG_ARTIFACT}`, `{layout.FRONT_TABLE_ARTIFACT}`; "
            f"the hypervolume after each complete trial is the metric `{layout.HYPERVOLUME_METRIC}`.\n\n"
            f"Trials are this run's child runs, named by Optuna number and varied values; filter the front with "
            f"`tags.{layout.TAG_FRONT} = '1'` (the knee: `tags.{layout.TAG_KNEE} = '1'`). "
            f"`hyperlab pareto {home.name}` prints it; `hyperlab sample RUN_ID` samples a trial's model.")


def build_kernels_first(space: SearchSpace, base_config) -> None:
    """Build the HyperLSTM's C++ cell loops on the driver before any trial starts (once per machine and
    version), with a notice: otherwise the first trials wait for it silently, in their workers."""
    from hyperlab.models import build_cpu_kernels, cpu_kernels_built

    cells = {getattr(base_config.model, "cell", None)}
    if "model.cell" in space.space:
        cells |= set(getattr(space.space["model.cell"], "values", []))
    if "hyperlstm" not in cells or base_config.device == "cuda" or cpu_kernels_built():
        return
    print("building the HyperLSTM's C++ cell loops (once per machine and version, about a minute)...", flush=True)
    started = time.monotonic()
    built = build_cpu_kernels()
    print(f"  {'built' if built else 'not built (trials use the PyTorch code)'} in "
          f"{time.monotonic() - started:.0f} s", flush=True)


@contextlib.contextmanager
def _signals_held():
    held = {signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _trainable(home: SearchHome, space: SearchSpace, base_config, trainable=None):
    trainable = trainable or tune.with_parameters(train_trial, base_config=base_config, data_dir=home.data_dir,
                                                  objectives=tuple(space.objectives),
                                                  experiment_uri=home.experiment_path)
    resources = space.resources
    return tune.with_resources(trainable, lambda config: resources.for_params(config.get(N_PARAMS_KEY, 0)))


REUSE_ACTORS = True  # a trial's worker process serves the next trial (no new process, no imports again)


def _tune_config(home: SearchHome, space: SearchSpace, base_config) -> tune.TuneConfig:
    searcher = StudySearcher(space, base_config, study_name=home.name, optuna_storage=home.optuna_storage,
                             data_dir=home.data_dir)
    scheduler = None
    if space.early_stopping:
        rule, schedule = space.early_stopping, base_config.schedule
        if rule.rule == "asha" and len(space.objectives) > 1:
            print(f"hyperlab: early stopping on {rule.metric} alone (rule asha) stops small models first, whose "
                  f"{rule.metric} is worse at every rung: the small end of the front starves; rule moasha ranks "
                  f"the objectives", file=sys.stderr)
        evaluations = -(-schedule.steps // schedule.eval_every)
        scheduler = PersistentASHA(rule, space.objectives, max_evaluations=evaluations,
                                   state_path=f"{home.experiment_path}/{EARLY_STOPPING_STATE}")
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.trials,
                           max_concurrent_trials=space.concurrency, reuse_actors=REUSE_ACTORS)


def _run_config(home: SearchHome, space: SearchSpace, callbacks) -> tune.RunConfig:
    return tune.RunConfig(
        name=home.name, storage_path=home.storage, callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=space.retries),
    )
