"""The one writer of a search's MLflow runs (see ``layout.py``): a parent run per search and a child
run per trial. It runs in the driver only, so a sqlite store works locally and a tracking server works
on a cluster. The trial-to-run map lives in MLflow itself (the ``hyperlab.ray_trial_id`` tag), so a
resumed search finds its runs again instead of duplicating them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunTag

from hyperlab.tracking import layout, runs
from hyperlab.tracking.store import get_or_create_experiment


class SearchWriter:
    """Writes one search: ``start`` (or find) the parent run, then trials as they start and end."""

    def __init__(self, tracking_uri: str, name: str, objectives: dict[str, str]):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.name = name
        self.objectives = objectives
        self.experiment_id = get_or_create_experiment(self.client, name, tags={layout.TAG_SEARCH: name})
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}  # Ray trial id -> MLflow run id

    # ---- the search -------------------------------------------------------------------------------
    def start(self, tags: dict[str, str], params: dict[str, Any], artifacts: dict[str, str]) -> str:
        """Create the parent run, or reopen it when the search is resumed. ``params``: the search's
        fixed settings; ``artifacts``: file name -> text."""
        existing = self._find(f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_SEARCH}'")
        if existing:
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._runs = {r.data.tags[layout.TAG_TRIAL_ID]: r.info.run_id for r in self.trial_runs()}
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=self.name, tags={
            **tags, layout.TAG_SEARCH: self.name, layout.TAG_ROLE: layout.ROLE_SEARCH,
            layout.TAG_OBJECTIVES: json.dumps(self.objectives)})
        self.parent_id = run.info.run_id
        runs.log_params(self.client, self.parent_id, params)
        for artifact_name, text in artifacts.items():
            self.client.log_text(self.parent_id, text, artifact_name)
        return self.parent_id

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)

    def finish_interrupted(self) -> None:
        """The driver stopped with an error or an interrupt: the parent and its open trial runs are
        marked KILLED (``hyperlab resume`` reopens them)."""
        parents = self._find(f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_SEARCH}'")
        if not parents:
            return
        self.parent_id = parents[0].info.run_id
        self.close_orphans(known_trial_ids=set())
        self.finish("KILLED")

    def trial_runs(self) -> list:
        return self._find(f"tags.`{layout.TAG_ROLE}` = '{layout.ROLE_TRIAL}'")

    def _find(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # ---- trials -----------------------------------------------------------------------------------
    def start_trial(self, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The trial's run: created once, reopened (status RUNNING) when the trial resumes."""
        if trial_id in self._runs:
            run_id = self._runs[trial_id]
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{self.name}/{trial_id}", tags={
            **tags, layout.TAG_PARENT: self.parent_id, layout.TAG_SEARCH: self.name,
            layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_TRIAL_ID: trial_id})
        runs.log_params(self.client, run.info.run_id, params)
        self._runs[trial_id] = run.info.run_id
        return run.info.run_id

    def log_metrics(self, trial_id: str, metrics: dict[str, Any], step: int) -> None:
        runs.log_metrics(self.client, self._runs[trial_id], metrics, step)

    def set_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(self._runs[trial_id], tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_trial(self, trial_id: str, fidelity: str, outcome: str, error: str | None = None) -> None:
        run_id = self._runs[trial_id]
        self.set_tags(trial_id, {layout.TAG_FIDELITY: fidelity, layout.TAG_OUTCOME: outcome})
        if error:
            self.client.log_text(run_id, error, layout.ERROR_ARTIFACT)
        self.client.set_terminated(run_id, status=layout.STATUS_OF_FIDELITY[fidelity])

    def close_orphans(self, known_trial_ids: set[str]) -> int:
        """Runs left RUNNING by a driver that died before Tune recorded their trial: mark KILLED."""
        closed = 0
        for run in self.trial_runs():
            if run.info.status == "RUNNING" and run.data.tags.get(layout.TAG_TRIAL_ID) not in known_trial_ids:
                self.client.log_batch(run.info.run_id, tags=[
                    RunTag(layout.TAG_FIDELITY, layout.PARTIAL), RunTag(layout.TAG_OUTCOME, "interrupted")])
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
        return closed

    # ---- the search's own series and files --------------------------------------------------------
    def search_tag(self, key: str) -> str | None:
        return self.client.get_run(self.parent_id).data.tags.get(key)

    def set_search_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.parent_id, key, value)

    def log_search_metric(self, key: str, value: float, step: int) -> None:
        runs.log_metrics(self.client, self.parent_id, {key: value}, step)

    def log_search_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.parent_id, str(directory), artifact_path)
