"""The one place hyperlab uses PyTorch's private parts, each with a public fallback.

* ``torch.ops.mkldnn._linear_pointwise``: oneDNN's matmul (with a fused add). For the fused
  HyperLSTM's skinny products (B columns) it is 1.2x (forward) to 1.9x (transposed weight) faster
  than ``torch.mm``'s sgemm on the CPU; without it (another build of torch) ``torch.mm`` runs. The C++
  loops (``cell_kernels.cpp``) look the same operator up by name in one function, ``onednn``, with
  the same fallback.
* The lock file ``torch.utils.cpp_extension`` leaves in a build folder (``lock``): a build killed
  midway leaves it behind and torch would wait for it forever.

Tested on torch 2.11 and 2.13 (``pyproject.toml`` bounds the version).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


@functools.cache
def has_onednn_matmul() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_mm(a: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """a @ weight_t.t() through oneDNN (float32 CPU tensors; check ``has_onednn_matmul`` first)."""
    return torch.ops.mkldnn._linear_pointwise(a, weight_t, None, "none", [], "")


def onednn_mm_add(a: torch.Tensor, weight_t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a @ weight_t.t() + c through oneDNN, the addition fused (``c`` contiguous)."""
    return torch.ops.mkldnn._linear_pointwise.binary(a, c, weight_t, None, "add")


def clear_stale_build_lock(folder: str) -> None:
    """Remove torch's build lock in ``folder``; call only while holding hyperlab's own build lock (so the
    file can only be a killed build's leftover)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, "lock"))
