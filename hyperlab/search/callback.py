"""What the driver records of a search, and the Tune callbacks that feed it.

``SearchRecorder`` owns the search's MLflow writer, its outbox (writes off the driver's loop, retried
through outages) and its reporter. The runner makes one per search run and registers it under the
search's name; the Tune callbacks hold only that name (Tune pickles its callbacks with the experiment,
and a restored experiment finds the recorder of the driver that restored it).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from ray import tune

from hyperlab.metrics import COMPLETE, FAILED, PARTIAL
from hyperlab.search import ray_private
from hyperlab.search.report import CPU_SECONDS, GPU_SECONDS, SearchReporter
from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY
from hyperlab.search.trainable import EVALUATION_KEY, NODE_KEY, RESUMED_FROM_KEY, trial_overrides
from hyperlab.search.trial_store import TrialCheckpoints
from hyperlab.tracking import layout
from hyperlab.tracking.outbox import Outbox
from hyperlab.tracking.writer import SearchWriter

log = logging.getLogger(__name__)
_METRIC_PREFIXES = ("model/", "train/", "val/", "test/", "time/", "throughput", "cost/")
RECORDERS: dict[str, SearchRecorder] = {}
FLUSH_TIMEOUT_S = 600.0
MODEL_FILES = ("model.pt", "config.yaml")  # of a trial's final checkpoint, what its run keeps (not trainer.pt)


class SearchRecorder:
    def __init__(self, tracking_uri: str, name: str, objectives: dict[str, str], total: int,
                 experiment_path: str, bounds: dict[str, float] | None = None):
        self.name, self.total = name, total
        self.checkpoints = TrialCheckpoints(experiment_path)
        self.writer = SearchWriter(tracking_uri, name, objectives)
        self.reporter = SearchReporter(self.writer, objectives, bounds)
        self.outbox = Outbox(on_idle=self.writer.flush)
        self.statuses: dict[str, str] | None = None  # Tune trial id -> status, when the experiment ended
        self.failed_in_study: set[int] = set()  # numbers the study holds FAIL (a resumed search; see ``restored``)
        self.ended_before: dict[int, tuple[str, dict]] = {}  # Optuna number -> Tune status and last result, of
        # the trials that had ended when Tune's snapshot was taken (a resumed search)
        self._process: dict[str, tuple] = {}  # Tune trial id -> (node, step resumed from) of its process
        self.ended: str | None = None  # how the record ended ("FINISHED" or "KILLED"), once ``finish`` ran
        self._ending = threading.Lock()
        self.errors = 0

    def start(self, tags: dict[str, str], params: dict, artifacts: dict[str, str], resumed: bool) -> None:
        self.writer.start(tags, params, artifacts)  # at once: a store that cannot be reached stops the start
        if resumed:
            self.reporter.load()

    def trial_started(self, trial) -> None:
        config = trial.config
        self.outbox.submit(self.writer.start_trial, int(config[OPTUNA_TRIAL_KEY]), trial.trial_id,
                           trial_overrides(config), {layout.TAG_N_PARAMS_SIZED: str(config.get(N_PARAMS_KEY, ""))})

    def trial_result(self, trial, result: dict) -> None:
        step = int(result.get("step", result.get(EVALUATION_KEY, 0)))
        metrics = {k: v for k, v in result.items() if k.startswith(_METRIC_PREFIXES)}
        number = int(trial.config[OPTUNA_TRIAL_KEY])
        self.outbox.submit_quietly(self.writer.log_metrics, number, metrics, step)
        process = (result.get(NODE_KEY), int(result.get(RESUMED_FROM_KEY, 0)))
        if self._process.get(trial.trial_id) != process:  # a new process of the trial: where, and from what
            self._process[trial.trial_id] = process
            tags = {layout.TAG_NODE: process[0].rpartition(":")[0], layout.TAG_PROCESS: process[0]} if process[0] else {}
            if process[1]:
                tags[layout.TAG_RESUMED_FROM] = process[1]
            self.outbox.submit(self.writer.set_tags, number, tags)

    def trial_retried(self, trial) -> None:
        self.outbox.submit(self.writer.set_tags, int(trial.config[OPTUNA_TRIAL_KEY]),
                           {layout.TAG_RETRIES: trial.num_failures})

    def trial_ended(self, trial, fidelity: str, outcome: str, error: str | None = None) -> None:
        number = int(trial.config[OPTUNA_TRIAL_KEY])
        metrics = {k: v for k, v in (trial.last_result or {}).items() if k.startswith(_METRIC_PREFIXES)}
        metrics.update(trial_cost(trial, metrics))
        self.outbox.submit(self.writer.log_final, number, metrics, int((trial.last_result or {}).get("step", 0)))
        self.outbox.submit(self._record_checkpoint, number, fidelity != FAILED)
        # the front first: the trial's own front tags then go in its last batch, with its end
        self.outbox.submit(self.reporter.trial_ended, number, trial_overrides(trial.config), metrics, fidelity)
        self.outbox.submit(self.writer.end_trial, number, fidelity, outcome, error)
        self.outbox.submit(self._publish)
        self.errors += fidelity == FAILED

    def _publish(self) -> None:
        """The report, if due; the final one as soon as the last trial has ended (while Tune stops its
        workers), so that the search's end finds it written."""
        self.reporter.publish(force=self.reporter.ended >= self.total)

    def _record_checkpoint(self, number: int, with_model: bool) -> None:
        """Tag the trial's run with where its latest checkpoint lies and, for a trial that trained to
        its end or was stopped early, log that checkpoint's model and config as the run's artifacts
        (``hyperlab sample RUN`` and ``hyperlab.load_model(RUN)`` read them, from any machine)."""
        where = self.checkpoints.checkpoint_uri(number)
        if not where:
            return
        self.writer.set_tags(number, {layout.TAG_CHECKPOINT: where})
        if with_model:
            with tempfile.TemporaryDirectory(prefix="hyperlab-model-") as tmp:
                folder = self.checkpoints.fetch_latest(number, Path(tmp), files=MODEL_FILES)
                if folder is not None:
                    self.writer.log_model(number, folder)

    def experiment_ended(self, trials) -> None:
        self.statuses = {trial.trial_id: trial.status for trial in trials}

    def restored(self, trials) -> None:
        """The trials Tune's restored snapshot holds (its first step): those it recorded as ended are never
        run again, so an end that a killed driver had not yet written to MLflow is written now."""
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self.ended_before[int(trial.config[OPTUNA_TRIAL_KEY])] = (trial.status, dict(trial.last_result or {}))
                self.outbox.submit(self._catch_up, trial)
        known = {int(trial.config[OPTUNA_TRIAL_KEY]) for trial in trials}
        for number in sorted(self.failed_in_study - known):
            self.outbox.submit(self._close_failed, number)

    def _close_failed(self, number: int) -> None:
        """A trial that failed after Ray's last snapshot, before the driver stopped: the study holds its
        FAIL, Tune's restored state does not hold the trial, so nothing runs it again; its run, if the end
        had not reached MLflow, is ended FAILED now."""
        if not self.writer.is_open(number):
            return
        self.errors += 1
        self.writer.end_trial(number, FAILED, "error", "the trial failed before the driver stopped, after Ray's "
                              "last experiment snapshot: its error is in its Ray trial directory's error.txt")
        log.info("trial %d failed before the driver stopped: its record is ended now", number)

    def _catch_up(self, trial) -> None:
        """A trial that ended before the driver stopped (Tune's snapshot says so, so Tune does not run it
        again) while its run still waited for the results and the end that were on their way to MLflow:
        they are written now, from the trial's own ``result.json``."""
        number = int(trial.config[OPTUNA_TRIAL_KEY])
        if not self.writer.is_open(number):
            return
        self.writer.start_trial(number, trial.trial_id, trial_overrides(trial.config), {})
        results = ray_private.trial_results(trial) or [trial.last_result or {}]
        for result in results:
            step = int(result.get("step", result.get(EVALUATION_KEY, 0)))
            self.writer.log_metrics(number, {k: v for k, v in result.items() if k.startswith(_METRIC_PREFIXES)}, step)
        last = results[-1]
        metrics = {k: v for k, v in last.items() if k.startswith(_METRIC_PREFIXES)}
        metrics.update(trial_cost(trial, metrics))
        self.writer.log_final(number, metrics, int(last.get("step", 0)))
        if trial.status == "ERROR":
            fidelity, outcome, error = FAILED, "error", _error_text(trial)
        else:
            fidelity, outcome, error = (COMPLETE, "completed", None) if last.get(COMPLETE_KEY) else (
                PARTIAL, "stopped early", None)
        log.info("trial %d ended before the driver stopped: its record is completed now", number)
        self.errors += fidelity == FAILED
        self._record_checkpoint(number, fidelity != FAILED)
        self.reporter.trial_ended(number, trial_overrides(trial.config), metrics, fidelity)
        self.writer.end_trial(number, fidelity, outcome, error)

    @property
    def all_ended(self) -> bool:
        """Whether every trial Tune ran came to an end (the experiment was not interrupted)."""
        statuses = self.statuses or {}
        return bool(statuses) and all(s in ("TERMINATED", "ERROR") for s in statuses.values())

    def finish(self, complete: bool) -> bool:
        """End the record: FINISHED with the final front, or KILLED with its open trial runs closed
        (``hyperlab resume`` reopens them). Waits for the outbox; False if it could not empty it. A second
        call (SIGTERM as the search ended) waits for the first's writes and changes nothing."""
        with self._ending:  # the first call's end is the record's
            last = ()
            if self.ended is None:
                self.ended = "FINISHED" if complete else "KILLED"
                if complete:
                    last = (partial(self.reporter.publish, True), partial(self.writer.finish, "FINISHED"))
                else:
                    last = (self.writer.close_open_trials, partial(self.reporter.publish, True),
                            partial(self.writer.finish, "KILLED"))
            self.outbox.close(0, *last)  # queued now; waited for below
        started = time.monotonic()
        done = self.outbox.flush(FLUSH_TIMEOUT_S)
        if not done:
            log.error("MLflow could not be reached for %.0f s; %d writes were not made", time.monotonic() - started,
                      self.outbox.pending)
        return done


class MlflowSearchCallback(tune.Callback):
    """Mirrors every trial into its own child run of the search's parent run (through the search's
    ``SearchRecorder``)."""

    def __init__(self, name: str):
        self.name = name
        self._seen_trials = False

    def __setstate__(self, state):  # restored with the experiment, in a new driver: its first step is to come
        self.__dict__.update(state, _seen_trials=False)

    @property
    def _recorder(self) -> SearchRecorder:
        return RECORDERS[self.name]

    def on_step_begin(self, iteration, trials, **info):
        if not self._seen_trials:
            self._seen_trials = True
            self._recorder.restored(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._recorder.trial_started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._recorder.trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get(COMPLETE_KEY):
            self._recorder.trial_ended(trial, COMPLETE, "completed")
        else:
            self._recorder.trial_ended(trial, PARTIAL, "stopped early")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._recorder.trial_retried(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_text(trial)
        outcome = "diverged" if "TrainingDiverged" in error else "error"
        self._recorder.trial_ended(trial, FAILED, outcome, error=error)

    def on_experiment_end(self, trials, **info):
        self._recorder.experiment_ended(trials)


def trial_cost(trial, metrics: dict) -> dict[str, float]:
    """What a trial cost, in resource-seconds: its CPU and GPU shares (as Ray placed it) times the seconds
    its training ran (``time/elapsed``, summed over its restarts from checkpoints); none without them."""
    elapsed = metrics.get("time/elapsed")
    if not isinstance(elapsed, (int, float)):
        return {}
    try:
        shares = trial.placement_group_factory.required_resources
    except Exception:  # noqa: BLE001 - a trial Tune never placed
        return {}
    return {CPU_SECONDS: float(shares.get("CPU", 0.0)) * elapsed, GPU_SECONDS: float(shares.get("GPU", 0.0)) * elapsed}


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
    """One progress line: trials ended out of the total, running and failed, time elapsed and an
    estimate of the time left (from the pace of the trials that ended since this driver started)."""

    def __init__(self, total: int, name: str):
        self._total, self._name = total, name
        self._progress = None

    def __getstate__(self):
        return {"_total": self._total, "_name": self._name, "_progress": None}

    def setup(self, **info):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("trials  {task.fields[status]}  elapsed"), TimeElapsedColumn(),
                                  TextColumn("{task.fields[eta]}"))
        self._task = self._progress.add_task(self._name, total=self._total, status="", eta="")
        self._started, self._done_at_start = time.monotonic(), None
        self._progress.start()

    def on_step_end(self, iteration, trials, **info):
        counts = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        if self._done_at_start is None:
            self._done_at_start = done
        status = f"running {counts.get('RUNNING', 0)}  failed {counts.get('ERROR', 0)}"
        self._progress.update(self._task, completed=done, status=status, eta=self._eta(done))

    def _eta(self, done: int) -> str:
        ended_here = done - (self._done_at_start or 0)
        if done >= self._total:
            return ""
        if ended_here <= 0:
            return "left: estimating"
        left = (time.monotonic() - self._started) / ended_here * (self._total - done)
        minutes, seconds = divmod(int(left), 60)
        return f"left: about {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    def on_experiment_end(self, trials, **info):
        self.on_step_end(0, trials)
        self._progress.stop()
