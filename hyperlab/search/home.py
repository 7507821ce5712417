"""Where a search lives: its MLflow store, its Ray results and trial checkpoints, its Optuna study,
and the cluster it runs on, resolved once and remembered with the search (its manifest).

Defaults, in order (documented in the README):

* tracking: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///hyperlab-runs/mlflow.db``
  (made absolute);
* storage (Ray's results and each trial's latest checkpoint): ``--storage``, else ``$HYPERLAB_STORAGE``,
  else the folder ``ray/`` beside a sqlite MLflow store, else ``hyperlab-runs/ray``;
* Optuna study: ``--optuna-storage`` (a journal file's path, or a database's SQLAlchemy URL), else
  ``$HYPERLAB_OPTUNA_STORAGE``, else the journal ``optuna.log`` beside a sqlite MLflow store, else
  ``optuna.log`` in a local storage folder; on a cluster whose storage is an object store and whose
  MLflow is a server there is no default: it must be given.

``hyperlab resume NAME`` reads the manifest from the search's parent run in MLflow, so it needs only
the name (and the tracking URI when it is not the default).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hyperlab.errors import UserError
from hyperlab.search.study_storage import is_journal, local_path
from hyperlab.tracking.store import sqlite_path

RUNS_DIR = Path("hyperlab-runs")


@dataclass(frozen=True)
class SearchHome:
    name: str
    tracking_uri: str
    storage: str               # a local folder (absolute) or a URI: s3://bucket/prefix
    optuna_storage: str        # a journal file (absolute) or an SQLAlchemy URL: sqlite:///..., postgresql://...
    address: str | None = None  # None: a local Ray; "auto" or HOST:PORT: the cluster this machine is on
    job_address: str | None = None  # http://HEAD:8265 when the driver runs as a Ray job submitted there
    data_dir: str | None = None
    smoke_test: bool = False
    num_cpus: int | None = None  # the local Ray's CPUs; None: all
    num_gpus: int | None = None  # the local Ray's GPUs; None: those it finds

    @property
    def experiment_path(self) -> str:
        """Ray Tune's experiment folder (its state, the trials' result files and checkpoints)."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def storage_is_local(self) -> bool:
        return "://" not in self.storage or self.storage.startswith("file://")

    def manifest(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, data: dict, where: str) -> SearchHome:
        fields = set(cls.__dataclass_fields__)
        required = {"name", "tracking_uri", "storage", "optuna_storage"}
        if not isinstance(data, dict) or not required <= set(data) or not set(data) <= fields:
            raise UserError(f"{where}: not a readable search manifest (keys: "
                            f"{sorted(data) if isinstance(data, dict) else type(data).__name__})")
        return cls(**data)

    def with_overrides(self, **changes) -> SearchHome:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def resolve(name: str, tracking_uri: str | None, storage: str | None, optuna_storage: str | None,
            address: str | None, data_dir: str | None, smoke_test: bool, num_cpus: int | None,
            job_address: str | None = None, num_gpus: int | None = None) -> SearchHome:
    """The home of a new search from its flags and the environment (see the module docstring)."""
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(RUNS_DIR / 'mlflow.db').resolve()}"
    db = sqlite_path(tracking)
    store_dir = db.resolve().parent if db is not None else None
    storage = storage or os.environ.get("HYPERLAB_STORAGE") or str((store_dir or RUNS_DIR) / "ray")
    storage = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    optuna = optuna_storage or os.environ.get("HYPERLAB_OPTUNA_STORAGE")
    if optuna is None:
        if store_dir is not None:
            optuna = str(store_dir / "optuna.log")
        elif "://" not in storage:
            optuna = str(Path(storage) / "optuna.log")
        else:
            raise UserError("--optuna-storage: with an MLflow server and object storage the Optuna study needs "
                            "a database the driver can reach, e.g. --optuna-storage postgresql://HOST/optuna "
                            "(or $HYPERLAB_OPTUNA_STORAGE)")
    elif is_journal(optuna):
        optuna = str(Path(optuna).expanduser().resolve())
    data = data_dir or os.environ.get("HYPERLAB_DATA_DIR")
    return SearchHome(name=name, tracking_uri=tracking, storage=storage, optuna_storage=optuna, address=address,
                      job_address=job_address, data_dir=str(Path(data).expanduser().resolve()) if data else None,
                      smoke_test=smoke_test, num_cpus=num_cpus, num_gpus=num_gpus)


def prepare_local_folders(home: SearchHome) -> None:
    """Create the local folders the stores need (a sqlite database's folder, a local storage folder)."""
    for db in (sqlite_path(home.tracking_uri), local_path(home.optuna_storage)):
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
    if home.storage_is_local:
        Path(home.storage.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
