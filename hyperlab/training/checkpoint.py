"""Atomic, exact checkpoints: a directory written under a temporary name, fsynced, then renamed.

A checkpoint directory ``<workdir>/checkpoint-<step>`` holds ``model.pt`` (the state dict alone, so
a reader that only samples needs nothing else), ``trainer.pt`` (optimiser, RNG states, step, the
hidden state carried across chunks, running sums, the metrics reported with it) and
``config.yaml``. A crash at any moment leaves either the previous checkpoint or the new one
visible, never a partial one (one exception: saving a step that already has a checkpoint moves the
old copy aside to ``.checkpoint-<step>.old.tmp`` just before the new one takes its name). Temporary
folders a crash leaves behind are removed by the next save.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
_TEMPORARY = re.compile(rf"^\.{PREFIX}\d+\..*tmp$")  # ".checkpoint-8.x1y2.tmp", ".checkpoint-8.old.tmp"


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(workdir: str | Path, step: int, model_state: dict, trainer_state: dict,
         config: dict[str, Any]) -> Path:
    """Write ``<workdir>/checkpoint-<step>`` atomically and delete older checkpoints; returns its path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.iterdir():  # left by a crash; an old-aside folder would block the swap below
        if _TEMPORARY.match(stale.name):
            _remove(stale)
    final = workdir / f"{PREFIX}{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{step}.", suffix=".tmp", dir=workdir))
    try:
        torch.save(model_state, tmp / "model.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        if final.exists():  # the same step again (a run resumed at its end): move the old one aside
            os.replace(final, workdir / f".{final.name}.old.tmp")
        os.replace(tmp, final)  # atomic on one filesystem: readers see all of it or none
        _fsync(workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in workdir.iterdir():
        if old != final and (_NAME.match(old.name) or _TEMPORARY.match(old.name)):
            _remove(old)
    return final


def checkpoints(workdir: str | Path) -> list[Path]:
    """The complete checkpoint directories under ``workdir``, oldest step first (none if it is absent)."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in workdir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def latest(workdir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``workdir`` (temporary directories ignored), or None."""
    found = checkpoints(workdir)
    return found[-1] if found else None


def load_model_state(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The model's state dict from a checkpoint directory."""
    return torch.load(Path(path) / "model.pt", map_location=device, weights_only=True)


def load_trainer_state(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Optimiser, RNG states, step, carried hidden state and running sums from a checkpoint directory."""
    return torch.load(Path(path) / "trainer.pt", map_location=device, weights_only=True)


def to_device(tree: Any, device: str | torch.device) -> Any:
    """Tensors inside nested tuples/lists/dicts (a hidden state) moved to ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_device(item, device) for item in tree)
    if isinstance(tree, dict):
        return {key: to_device(item, device) for key, item in tree.items()}
    return tree


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
