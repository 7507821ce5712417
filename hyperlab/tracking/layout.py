"""How hyperlab lays out searches in MLflow: the contract between the writer and the readers.

One MLflow experiment per search name. In it:

* one *parent run* per search (``TAG_ROLE = "search"``), tagged ``TAG_SEARCH=<name>``, with the
  objectives as JSON in ``TAG_OBJECTIVES``, the search space as artifact ``search_space.yaml``,
  the code version in ``TAG_CODE_VERSION``, and the analysis artifacts (front table, figures,
  hypervolume series) kept current as trials finish;
* one *child run* per trial (``TAG_ROLE = "trial"``, ``mlflow.parentRunId`` set), with the
  suggested configuration as params (dotted keys, e.g. ``model.n_z``), step-indexed metrics at
  every evaluation, final metrics (every objective, ``model/n_params`` among them), the parameter
  report, and tags linking the Ray trial id, the Optuna trial number and the checkpoint path.

A trial's fidelity (``TAG_FIDELITY``) is one of ``complete`` (trained to the end: the run is
FINISHED), ``partial`` (stopped early, or interrupted and never resumed: KILLED) or ``failed``
(raised, diverged or lost its worker, after its retries: FAILED, with ``error.txt``). Fronts are
computed from complete trials only. Configurations over the parameter budget never train and never
get a run: they are failed trials of the Optuna study, with the reason as a user attribute.
"""

from __future__ import annotations

from hyperlab.analysis.report import FRONT_CSV, FRONT_PARQUET, TRADEOFF_HTML, TRADEOFF_PNG
from hyperlab.metrics import COMPLETE, FAILED, FIDELITIES, PARTIAL  # noqa: F401 - the fidelities, re-exported

TAG_SEARCH = "hyperlab.search"
TAG_ROLE = "hyperlab.role"                 # "search" | "trial"
TAG_OBJECTIVES = "hyperlab.objectives"     # JSON: {"model/n_params": "min", "val/bpc": "min"}
TAG_CODE_VERSION = "hyperlab.code_version"
TAG_FIDELITY = "hyperlab.fidelity"         # "complete" | "partial" | "failed"
TAG_TRIAL_ID = "hyperlab.ray_trial_id"
TAG_OPTUNA_TRIAL = "hyperlab.optuna_trial"
TAG_CHECKPOINT = "hyperlab.checkpoint"
TAG_OUTCOME = "hyperlab.outcome"           # "completed", "stopped early", "interrupted", "diverged" or "error"
TAG_RETRIES = "hyperlab.retries"           # how often the trial failed and was retried
TAG_RESUMED_FROM = "hyperlab.resumed_from_step"  # the checkpoint step its latest process continued from
TAG_NODE = "hyperlab.node"                 # the Ray node its latest process ran on (IP)
TAG_PROCESS = "hyperlab.process"           # that process: IP:PID
TAG_FRONT = "hyperlab.front"               # a complete trial: "1" on the Pareto front, else "0"
TAG_KNEE = "hyperlab.knee"                 # "1" on the front's knee (two objectives), else "0"
TAG_NOTE = "mlflow.note.content"           # the run's description in the MLflow UI
TAG_N_PARAMS_SIZED = "hyperlab.n_params_sized"  # the parameter count sized before training
TAG_SPACE_HASH = "hyperlab.space_hash"     # the same search space (any seed, any name)
TAG_STORAGE = "hyperlab.storage"           # where Ray keeps the search's experiment and checkpoints
TAG_REFERENCE = "hyperlab.reference"       # JSON: the hypervolume's reference point, fixed per search
TAG_DATASET = "data.dataset"               # the search's dataset (the training config's key)
TAG_PARENT = "mlflow.parentRunId"

ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"

STATUS_OF_FIDELITY = {COMPLETE: "FINISHED", PARTIAL: "KILLED", FAILED: "FAILED"}

SEARCH_SPACE_ARTIFACT = "search_space.yaml"
MANIFEST_ARTIFACT = "search_manifest.json"  # where the search lives (hyperlab.search.home): what resume reads
ERROR_ARTIFACT = "error.txt"
REPORT_DIR = "pareto"                      # the parent run's analysis files (hyperlab.analysis.report)
FRONT_TABLE_ARTIFACT = f"{REPORT_DIR}/{FRONT_CSV}"
FRONT_PARQUET_ARTIFACT = f"{REPORT_DIR}/{FRONT_PARQUET}"
TRADEOFF_PNG_ARTIFACT = f"{REPORT_DIR}/{TRADEOFF_PNG}"
TRADEOFF_HTML_ARTIFACT = f"{REPORT_DIR}/{TRADEOFF_HTML}"
HYPERVOLUME_METRIC = "search/hypervolume"
