"""The C++ recurrence (``cell_kernels.cpp``: the fused HyperLSTM's forward and backward loops over time,
``forward_sequence`` and ``backward_steps``), compiled with ``torch.utils.cpp_extension.load_inline`` on
first use (about 30 s) and cached by torch (``TORCH_EXTENSIONS_DIR``, keyed by the source).

``kernels()`` returns the compiled module, or None: when ``HYPERLAB_NO_EXTENSION=1`` is set, or when
compiling or loading fails (no compiler, no ninja), after one logged warning. ``hyperlstm_fused`` then
runs its Python loops over ``fused_cell``'s PyTorch code, which compute the same thing.

Compiled with -O3 -fno-trapping-math and, where torch reports AVX2 or better, -mavx2 -mfma. Not -ffast-math:
its finite-math assumption gave NaN for saturated gates; the float exp is written out instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

import torch

from hyperlab.models import torch_private

log = logging.getLogger(__name__)

_FUNCTIONS = ["forward_sequence", "backward_steps"]


def _arch_flags() -> list[str]:
    """AVX2 + FMA where torch's own CPU dispatch says the machine has them (the build is per machine)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        return []
    return ["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []


def _build_dir(name: str) -> str:
    """torch's extension cache folder for ``name``."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                    "torch_extensions")
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    return folder


@contextlib.contextmanager
def _build_lock(folder: str):
    """One build at a time per folder, under an flock that the kernel releases when its holder dies.
    Inside it, torch's own lock file can only have been left by a process killed mid-build (torch would
    wait for it forever: a Ray trial stopped while compiling must not hang the next), so it goes."""
    import fcntl  # POSIX; elsewhere the build fails over to the PyTorch code like any other

    with open(os.path.join(folder, "hyperlab.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            torch_private.clear_stale_build_lock(folder)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_name(avx2: bool) -> str:
    """One build per instruction set, Python and torch version: a home folder shared by several
    environments (a cluster's NFS home, say) must not load a build made for another."""
    torch_version = re.sub(r"[^0-9A-Za-z]", "_", torch.__version__)
    return f"hyperlab_cell{'_avx2' if avx2 else ''}_py{sys.version_info[0]}{sys.version_info[1]}_torch{torch_version}"


def _find_ninja() -> None:
    """torch runs ``ninja`` from PATH; the one pip installed with hyperlab sits beside this Python, which is
    not on PATH when the environment is used without being activated."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def _source() -> str:
    return (Path(__file__).with_name("cell_kernels.cpp")).read_text()


def is_built() -> bool:
    """Whether this machine has the compiled module for this version already (loading it is quick)."""
    if os.environ.get("HYPERLAB_NO_EXTENSION", "") not in ("", "0"):
        return True
    return _has_build(_build_dir(_build_name(bool(_arch_flags()))))


def _has_build(folder: str) -> bool:
    return any(entry.endswith(".so") for entry in os.listdir(folder))


@functools.cache
def kernels():
    """The compiled module, or None (HYPERLAB_NO_EXTENSION=1, or the build failed: one warning)."""
    if os.environ.get("HYPERLAB_NO_EXTENSION", "") not in ("", "0"):
        return None
    flags = _arch_flags()
    name = _build_name(bool(flags))
    try:
        from torch.utils.cpp_extension import load_inline

        _find_ninja()
        folder = _build_dir(name)
        with _build_lock(folder):
            if not _has_build(folder):
                log.warning("hyperlab: building the HyperLSTM's C++ cell loops (once per machine and version, "
                            "about 30 s) in %s", folder)
            return load_inline(name=name, cpp_sources=[_source()], functions=_FUNCTIONS, build_directory=folder,
                               extra_cflags=["-O3", "-fno-trapping-math", *flags], verbose=False)
    except Exception as error:  # noqa: BLE001 - any build or load failure means the fallback
        log.warning("hyperlab: C++ cell kernels unavailable (%s: %s); using the PyTorch code",
                    type(error).__name__, str(error).strip().splitlines()[-1] if str(error).strip() else "")
        return None
