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


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models only wait on extra threads, and the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
