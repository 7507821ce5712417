"""Fixtures the test files share: the real datasets, a private cache of derived arrays, one torch thread.

None is autouse: a test file asks for them (``pytestmark = pytest.mark.usefixtures(...)`` or an argument).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


class SharedData:
    """The real datasets: ``$HYPERLAB_SHARED_DATA``, else ``../shared/data`` beside the repository.

    ``root`` is that folder, or None when it is absent; calling ``shared_data("ptb", ...)`` returns it
    and skips the test when it (or one of the named subfolders) is absent.
    """

    def __init__(self, folder: Path):
        self.root = folder if folder.is_dir() else None
        self._folder = folder

    def __call__(self, *subfolders: str) -> Path:
        missing = [name for name in subfolders if self.root is None or not (self.root / name).is_dir()]
        if self.root is None or missing:
            what = ", ".join(missing) if missing else "real datasets"
            pytest.skip(f"{what} not found under {self._folder} (set HYPERLAB_SHARED_DATA)")
        return self.root


@pytest.fixture(scope="session")
def shared_data() -> SharedData:
    return SharedData(Path(os.environ.get("HYPERLAB_SHARED_DATA", REPO.parent / "shared" / "data")))


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """Derived arrays of read-only sources go to a per-test folder (returned), never to ~/.cache;
    ``HYPERLAB_DATA_DIR`` is unset so only explicit data directories are read."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HYPERLAB_CACHE_DIR", str(cache))
    monkeypatch.delenv("HYPERLAB_DATA_DIR", raising=False)
    return cache


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    from hyperlab.tracking.store import init_store

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    init_store(f"sqlite:///{db}")  # MLflow's migrations take seconds: once per session
    return db


@pytest.fixture
def mlflow_store(_empty_store, tmp_path) -> str:
    """The tracking URI of a new, empty sqlite MLflow store at ``tmp_path/mlflow.db`` (a copy of one
    migrated store, so the schema is built once a session)."""
    import shutil

    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models only wait on extra threads, and the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pin_stand_in(monkeypatch, dataset: str, path: Path) -> None:
    """Let a generated stand-in at ``path`` pass for the published file of ``dataset`` ("cifar10",
    "enwik8", "text8"): its sha256 becomes the pinned one, for this test only (every file is verified)."""
    import dataclasses

    from hyperlab.data import sources, text
    from hyperlab.data.paths import file_sha256

    digest = file_sha256(path)
    if dataset == "cifar10":
        monkeypatch.setattr(sources, "CIFAR10", dataclasses.replace(sources.CIFAR10, sha256=digest))
        return
    recipe = text.RECIPES[dataset]
    files = tuple(dataclasses.replace(f, sha256=digest) if f.name == path.name else f for f in recipe.files)
    monkeypatch.setitem(text.RECIPES, dataset, dataclasses.replace(recipe, files=files))


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # the field after the state, past "(comm)"
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _fit_batch(model, tokens: torch.Tensor, lr: float, steps: int) -> list[float]:
    """Adam on one batch of token streams (B, T+1), next-token cross-entropy; the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        logits, _ = model(tokens[:, :-1])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def fit_batch():
    """``fit_batch(model, tokens, lr, steps) -> losses``: a char model trained on one fixed batch."""
    return _fit_batch


def perturb(model: torch.nn.Module, scale: float = 0.3, seed: int | None = None) -> torch.nn.Module:
    """Move every parameter off its initial value (where the hypernetwork is exactly constant), so that
    no term of the recurrence is trivially zero. Returns the model."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return model


def run_implementations(build, x, state, impls=("fused", "eager"), mask_seed: int = 8) -> dict:
    """Run one model under each implementation: ``build(impl)`` makes it (with equal weights each time),
    the same dropout masks are drawn (``mask_seed``), and a loss of the outputs and every final state is
    differentiated. Returns {impl: (outputs, final states, gradients of x, the state and the weights)}."""
    results = {}
    for impl in impls:
        model = build(impl)
        torch.manual_seed(mask_seed)
        out, final = model(x, state)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype).to(out.device)
        loss = (out * weights).sum() + sum((k + 2) * s.sum() for k, s in enumerate(final))
        inputs = [x, *state] if state is not None else [x]
        results[impl] = (out, tuple(final), torch.autograd.grad(loss, [*inputs, *model.parameters()]))
    return results


def assert_same_results(a, b, **tolerance) -> None:
    """Two results of ``run_implementations`` (or any nested tuples of tensors) agree within ``tolerance``."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, **tolerance)
        return
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert_same_results(left, right, **tolerance)


def needs_cpp_loops():
    """Skip the test when the C++ cell loops cannot be built here (no compiler or ninja)."""
    from hyperlab.models import _ext

    if _ext.kernels() is None:
        pytest.skip("the C++ cell loops are not available here (no g++/ninja, or HYPERLAB_NO_EXTENSION)")


# ---- MLflow stores in hyperlab's layout, written directly (no search runs) ---------------------------------

OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}


def log_search(client, name: str, objectives: dict[str, str], trials: list[dict],
               parent_tags: dict[str, str] | None = None) -> str:
    """Log a search: one experiment named ``name``, a parent run, and one child run per trial.

    A trial is {"params": {...}, "metrics": {...}, "fidelity": "complete"|"partial"|"failed"};
    the optuna trial number is its position. Returns the parent run id.
    """
    import json
    import time

    from mlflow.entities import Metric, Param

    from hyperlab.tracking import layout

    experiment = client.create_experiment(name)
    tags = {layout.TAG_SEARCH: name, layout.TAG_ROLE: layout.ROLE_SEARCH,
            layout.TAG_OBJECTIVES: json.dumps(objectives), **(parent_tags or {})}
    parent = client.create_run(experiment, tags=tags).info.run_id
    for number, trial in enumerate(trials):
        fidelity = trial.get("fidelity", layout.COMPLETE)
        run = client.create_run(experiment, tags={
            layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_PARENT: parent, layout.TAG_SEARCH: name,
            layout.TAG_FIDELITY: fidelity, layout.TAG_OPTUNA_TRIAL: str(number)}).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(k, float(v), now, 1) for k, v in trial.get("metrics", {}).items()],
                         params=[Param(k, str(v)) for k, v in trial.get("params", {}).items()])
        client.set_terminated(run, layout.STATUS_OF_FIDELITY[fidelity])
    client.set_terminated(parent, "FINISHED")
    return parent


def client_for(tmp_path):
    """A client on a fresh sqlite store in ``tmp_path`` and its tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri), uri


OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}


def example_trials(seed: int, n: int) -> list[dict]:
    """n trials of a HyperLSTM-like search: int, float, bool and str params (one conditional),
    a quarter of them partial or failed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        hidden, n_z = int(rng.choice([64, 128, 256])), int(rng.integers(2, 17))
        params = {"model.hidden_size": hidden, "model.n_z": n_z, "optim.lr": float(rng.uniform(1e-4, 1e-2)),
                  "model.layer_norm": bool(i % 2), "model.kind": "hyperlstm", "data.dataset": "ptb"}
        if i % 3 == 0:
            params["model.hyper_size"] = 32  # present in some trials only
        fidelity = "complete" if i % 4 else ("partial" if i % 8 else "failed")
        metrics = {"model/n_params": 4 * hidden * hidden + 1000 * n_z,
                   "val/bpc": 2.5 - np.log(hidden) / 5 + float(rng.normal(0, 0.05))}
        trials.append({"params": params, "metrics": metrics, "fidelity": fidelity})
    return trials


_SHARED: dict[str, tuple] = {}


def shared_store(tmp_path_factory):
    """One store for every analysis test module (building a sqlite schema takes seconds): searches
    alpha (24 trials) and beta (16), same space hash; gamma (3 trials, the first one deleted, and
    a fourth still running without metrics)."""
    from hyperlab.tracking import layout, load_search, load_search_meta

    if "store" not in _SHARED:
        client, uri = client_for(tmp_path_factory.mktemp("store"))
        log_search(client, "alpha", OBJECTIVES, example_trials(0, 24), parent_tags={"hyperlab.space_hash": "h1"})
        log_search(client, "beta", OBJECTIVES, example_trials(1, 16), parent_tags={"hyperlab.space_hash": "h1"})
        log_search(client, "gamma", OBJECTIVES, example_trials(2, 3))
        client.delete_run(load_search("gamma", uri)["run_id"].iloc[0])  # optuna trial 0
        experiment = client.get_experiment_by_name("gamma").experiment_id
        parent = load_search_meta("gamma", uri).parent_run_id
        client.create_run(experiment, tags={layout.TAG_ROLE: layout.ROLE_TRIAL, layout.TAG_PARENT: parent,
                                            layout.TAG_OPTUNA_TRIAL: "3"})  # still running: no fidelity tag
        _SHARED["store"] = client, uri
    return _SHARED["store"]


