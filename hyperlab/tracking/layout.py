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
TAG_N_PARAMS_SIZED = "hyperlab.n_params_sized"  # the parameter count sized before training
TAG_SPACE_HASH = "hyperlab.space_hash"     # the same search space (any seed, any name)
TAG_STORAGE = "hyperlab.storage"           # where Ray keeps the search's experiment and checkpoints
TAG_REFERENCE = "hyperlab.reference"       # JSON: the hypervolume's reference point, fixed per search
TAG_DATASET = "data.dataset"               # the search's dataset (the training config's key)
TAG_PARENT = "mlflow.parentRunId"

ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"

COMPLETE, PARTIAL, FAILED = "complete", "partial", "failed"
FIDELITIES = (COMPLETE, PARTIAL, FAILED)

STATUS_OF_FIDELITY = {COMPLETE: "FINISHED", PARTIAL: "KILLED", FAILED: "FAILED"}

SEARCH_SPACE_ARTIFACT = "search_space.yaml"
ERROR_ARTIFACT = "error.txt"
FRONT_TABLE_ARTIFACT = "pareto/front.csv"
FRONT_PARQUET_ARTIFACT = "pareto/front.parquet"
TRADEOFF_PNG_ARTIFACT = "pareto/tradeoff.png"
TRADEOFF_HTML_ARTIFACT = "pareto/tradeoff.html"
HYPERVOLUME_METRIC = "search/hypervolume"
