"""The one writer of a search's MLflow runs (see ``layout.py``): a parent run per search and a child
run per trial. It runs in the driver only (through an ``Outbox``, off the driver's loop), so a sqlite
store works locally and a tracking server works on a cluster. A trial's run is found by its Optuna
trial number (the ``hyperlab.optuna_trial`` tag), so a resumed search, and a trial adopted under a new
Ray id after a crash, reopen their runs instead of duplicating them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, RunTag

from hyperlab.tracking import layout, mlflow_sql, runs
from hyperlab.tracking.store import get_or_create_experiment

STEP_METRIC = "train/loss"  # in every evaluation's report: the steps a run has logged
SHORT_NAMES = {"hidden_size": "h", "hyper_size": "hy", "hyper_embedding_size": "he", "n_z": "z", "lr": "lr",
               "weight_decay": "wd", "embedding_size": "e", "dropout": "p", "batch_size": "b", "seq_len": "T",
               "depth": "d", "widen_factor": "k", "clip": "clip", "seed": "s"}
"""How a varied key's last part reads in a trial's run name (others: the initials of its words)."""


def trial_run_name(number: int, params: dict[str, Any]) -> str:
    """A trial's run name: its Optuna number and its varied values, e.g. ``t07 h68 hy14 z6``."""
    parts = [f"t{number:02d}"]
    for key, value in params.items():
        last = key.rpartition(".")[2]
        short = SHORT_NAMES.get(last) or "".join(word[:1] for word in last.split("_") if word) or last
        if isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, float):
            text = f"{value:.3g}"
        else:
            text = str(value)
        parts.append(f"{short}{text}")
    return " ".join(parts)[:250]


@dataclass
class _Pending:
    metrics: list = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


class SearchWriter:
    """Writes one search: ``start`` (or find) the parent run, then trials as they start and end."""

    def __init__(self, tracking_uri: str, name: str, objectives: dict[str, str]):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.name = name
        self.objectives = objectives
        self.experiment_id = get_or_create_experiment(self.client, name, tags={layout.TAG_SEARCH: name})
        # a sqlite store: runs written with SQL (cheaper); else through MLflow's client
        self._calls = mlflow_sql.RunWriter.open(tracking_uri) or ClientRunWriter(self.client)
        self.parent_id: str | None = None
        self._runs: dict[int, str] = {}  # Optuna trial number -> MLflow run id
        self._logged: dict[int, set[int]] = {}  # Optuna trial number -> steps logged (a resumed trial reports them again)
        self._pending: dict[str, _Pending] = {}  # run id -> metrics and tags not sent yet
        self._open: set[int] = set()  # trials whose runs a stopped driver left without their end

    # ---- the search -------------------------------------------------------------------------------
    def start(self, tags: dict[str, str], params: dict[str, Any], artifacts: dict[str, str]) -> str:
        """Create the parent run, or reopen it when the search is resumed. ``params``: the search's
        fixed settings; ``artifacts``: file name -> text (the manifest, the search space)."""
        existing = self._find(f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_SEARCH}'")
        if existing:
            self.parent_id = existing[0].info.run_id
            self._calls.set_status(self.parent_id, "RUNNING")
            trials = [r for r in self.trial_runs() if r.data.tags.get(layout.TAG_OPTUNA_TRIAL, "").isdigit()]
            self._runs = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): r.info.run_id for r in trials}
            self._open = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]) for r in trials if r.info.status == "RUNNING" or (
                r.info.status == "KILLED" and r.data.tags.get(layout.TAG_OUTCOME) == "interrupted")}
            return self.parent_id
        self.parent_id = self._calls.create_run(self.experiment_id, self.name, {
            **tags, layout.TAG_SEARCH: self.name, layout.TAG_ROLE: layout.ROLE_SEARCH,
            layout.TAG_OBJECTIVES: json.dumps(self.objectives)})
        runs.log_params(self.client, self.parent_id, params)
        for artifact_name, text in artifacts.items():
            self.client.log_text(self.parent_id, text, artifact_name)
        return self.parent_id

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._calls.set_status(self.parent_id, status, ended=True)
        self._calls.close()

    def trial_runs(self) -> list:
        return self._find(f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")

    def _find(self, filter_string: str) -> list:
        found, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    # ---- trials -----------------------------------------------------------------------------------
    def start_trial(self, number: int, ray_trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The trial's run: created once, reopened (status RUNNING) when the trial resumes."""
        if number in self._runs:
            run_id = self._runs[number]
            self.flush(run_id)
            self._calls.log_batch(run_id, tags=[RunTag(layout.TAG_TRIAL_ID, ray_trial_id)])
            self._calls.set_status(run_id, "RUNNING")
            self._logged[number] = {m.step for m in self.client.get_metric_history(run_id, STEP_METRIC)}
            return run_id
        run_id = self._calls.create_run(self.experiment_id, trial_run_name(number, params), {
            **tags, layout.TAG_PARENT: self.parent_id, layout.TAG_SEARCH: self.name,
            layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_TRIAL_ID: ray_trial_id,
            layout.TAG_OPTUNA_TRIAL: str(number)})
        self._runs[number] = run_id
        self._logged[number] = set()
        self._buffer(run_id).params.update(runs.param_values(params))  # sent with its first metrics
        return run_id

    def run_id(self, number: int) -> str | None:
        return self._runs.get(number)

    def is_open(self, number: int) -> bool:
        """Whether the trial's run is waiting for its end: left RUNNING (or closed as interrupted) by a
        driver that stopped, and not ended since."""
        return number in self._open

    def log_metrics(self, number: int, metrics: dict[str, Any], step: int) -> None:
        """Buffer one evaluation (``flush`` sends it); a step logged before (a resumed trial's report of it)
        is not logged twice. The parameter report (``model/...``) goes once, with the first evaluation
        (see ``runs.split_parameter_report``)."""
        logged = self._logged.setdefault(number, set())
        if step in logged:
            return
        entries, tags = runs.evaluation_entries(metrics, step, first=not logged)
        pending = self._buffer(self._runs[number])
        pending.metrics.extend(entries)
        pending.tags.update(tags)
        logged.add(step)

    def log_final(self, number: int, metrics: dict[str, Any], step: int) -> None:
        """Buffer what a trial's end adds (its cost: ``cost/...``) at its last step."""
        entries = runs.metric_entries({k: v for k, v in metrics.items() if k.startswith("cost/")}, step)
        if entries:
            self._buffer(self._runs[number]).metrics.extend(entries)

    def set_tags(self, number: int, tags: dict[str, str]) -> None:
        """Buffer tags of a trial's run (``flush`` sends them with its metrics)."""
        self._buffer(self._runs[number]).tags.update({k: str(v) for k, v in tags.items()})

    def _buffer(self, run_id: str) -> _Pending:
        return self._pending.setdefault(run_id, _Pending())

    def flush(self, only: str | None = None) -> None:
        """Send what is buffered (of one run, or of all), one batch per run. A call that changes a run's
        state flushes that run first, so that its record keeps the order of events; the other runs' buffers
        wait for the next flush of all (one request per run and second, not one per run and event)."""
        for run_id in [only] if only is not None else list(self._pending):
            pending = self._pending.get(run_id)
            if pending is None:
                continue
            tags = [RunTag(k, v) for k, v in pending.tags.items()]
            params = [Param(k, v) for k, v in pending.params.items()]
            for start in range(0, max(len(pending.metrics), len(params), 1), runs.MAX_PARAMS_PER_BATCH):
                self._calls.log_batch(run_id, metrics=pending.metrics[start:start + runs.MAX_PARAMS_PER_BATCH],
                                params=params[start:start + runs.MAX_PARAMS_PER_BATCH], tags=tags if start == 0 else [])
            del self._pending[run_id]  # only once sent: a call retried after an outage sends it again

    def log_model(self, number: int, checkpoint: Path) -> None:
        """A trial's final model as its run's artifacts: ``checkpoint/model.pt`` (weights only) and
        ``checkpoint/config.yaml``, and the resolved training config as ``config.yaml``."""
        run_id = self._runs[number]
        for name in ("model.pt", "config.yaml"):  # the checkpoint's model and config, not its trainer state
            self.client.log_artifact(run_id, str(checkpoint / name), runs.CHECKPOINT_ARTIFACT_DIR)
        self.client.log_artifact(run_id, str(checkpoint / "config.yaml"))

    def end_trial(self, number: int, fidelity: str, outcome: str, error: str | None = None) -> None:
        run_id = self._runs[number]
        self._open.discard(number)
        self.set_tags(number, {layout.TAG_FIDELITY: fidelity, layout.TAG_OUTCOME: outcome})
        self.flush(run_id)
        if error:
            self.client.log_text(run_id, error, layout.ERROR_ARTIFACT)
        self._calls.set_status(run_id, layout.STATUS_OF_FIDELITY[fidelity], ended=True)

    def close_open_trials(self) -> int:
        """Runs still RUNNING (the search was interrupted): KILLED, partial, outcome "interrupted";
        ``hyperlab resume`` reopens them."""
        self.flush()
        closed = 0
        for run in self.trial_runs():
            if run.info.status == "RUNNING":
                self._calls.log_batch(run.info.run_id, tags=[
                    RunTag(layout.TAG_FIDELITY, layout.PARTIAL), RunTag(layout.TAG_OUTCOME, "interrupted")])
                self._calls.set_status(run.info.run_id, "KILLED", ended=True)
                closed += 1
        return closed

    # ---- the search's own series and files --------------------------------------------------------
    def search_tag(self, key: str) -> str | None:
        return self.client.get_run(self.parent_id).data.tags.get(key)

    def set_search_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.parent_id, key, value)

    def log_search_metric(self, key: str, value: float, step: int) -> None:
        self._buffer(self.parent_id).metrics.extend(runs.metric_entries({key: value}, step))

    def search_series(self, keys) -> tuple[float, list[dict[str, float]]]:
        """The parent run's start (seconds since the epoch) and its series ``keys`` (each logged at the
        same steps) as one dict per step, as a stopped driver logged them."""
        run = self.client.get_run(self.parent_id)
        histories = {key: {m.step: m.value for m in self.client.get_metric_history(self.parent_id, key)} for key in keys}
        steps = sorted(set.intersection(*(set(h) for h in histories.values()))) if histories else []
        return run.info.start_time / 1000, [{key: histories[key][step] for key in keys} for step in steps]

    def log_search_artifacts(self, directory, artifact_path: str) -> None:
        self.client.log_artifacts(self.parent_id, str(directory), artifact_path)


class ClientRunWriter:
    """``mlflow_sql.RunWriter``'s calls through MLflow's client (any store: a tracking server, another schema)."""

    def __init__(self, client: MlflowClient):
        self.client = client

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], start_time: int | None = None) -> str:
        return self.client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name).info.run_id

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self.client.log_batch(run_id, metrics=list(metrics), params=list(params), tags=list(tags))

    def set_status(self, run_id: str, status: str, end_time: int | None = None, ended: bool = False) -> None:
        if ended:
            self.client.set_terminated(run_id, status=status, end_time=end_time)
        else:
            self.client.update_run(run_id, status=status)

    def close(self) -> None:
        pass
