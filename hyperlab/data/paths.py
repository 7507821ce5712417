"""Where datasets live, and where arrays derived from them are cached.

Raw files sit under the data directory in one folder per dataset (``ptb/``, ``mnist/``,
``cifar10/``, ``tinyshakespeare/``, ``enwik8/``, ``text8/``), the layout of the shared copy, so
``--data-dir /work/shared/data`` works as is. Derived arrays (token ids, vocabularies, decoded
images) are built once: beside the raw files when that folder is writable, else under a cache
directory, in a folder keyed by the sources' paths and contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyperlab.errors import UserError

DERIVED_FORMAT = 2  # bump when the layout or meaning of derived arrays changes


def resolve_data_dir(arg: str | Path | None = None) -> Path:
    """The argument, else ``$HYPERLAB_DATA_DIR``, else ``~/.cache/hyperlab/data``."""
    chosen = arg or os.environ.get("HYPERLAB_DATA_DIR") or Path.home() / ".cache" / "hyperlab" / "data"
    return Path(chosen).expanduser()


def derived_cache_root() -> Path:
    """Home of derived arrays when the data folder is read-only: ``$HYPERLAB_CACHE_DIR``,
    else ``~/.cache/hyperlab/derived``."""
    chosen = os.environ.get("HYPERLAB_CACHE_DIR") or Path.home() / ".cache" / "hyperlab" / "derived"
    return Path(chosen).expanduser()


def source_key(sources: list[Path]) -> str:
    """A short key of the sources' resolved paths and contents (sha256): two different files with equal
    names, sizes and times never share derived arrays, and an edited file gets new ones."""
    stamp = [DERIVED_FORMAT] + [(str(p.resolve()), file_sha256(p)) for p in sources]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def derived_dir(name: str, sources: list[Path], dataset_dir: Path | None = None) -> Path:
    """Folder for arrays derived from ``sources``: ``<dataset_dir>/derived/<key>`` when that is
    writable, else ``<cache root>/<name>-<key>``."""
    key = source_key(sources)
    if dataset_dir is not None and is_writable(dataset_dir):
        return dataset_dir / "derived" / key
    return derived_cache_root() / f"{name}-{key}"


def is_writable(folder: Path) -> bool:
    """Whether we may add files to ``folder``: its owner-write bit is set and we have access.
    (The mode bit matters for root, whom the kernel lets write into read-only-marked folders.)"""
    return bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def load_or_build(target: Path, build: Callable[[], tuple[dict[str, np.ndarray], dict]]
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map the arrays cached in ``target``; build them first if absent.

    ``build`` returns ``(arrays, meta)``; arrays are saved as ``<key>.npy`` and ``meta`` as
    ``meta.json``. The folder is written under a temporary name and renamed into place, so a
    crash never leaves a half-built cache that later runs would trust.
    """
    if not (target / "meta.json").is_file():
        arrays, meta = build()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        except OSError as err:
            raise UserError(f"cannot cache derived arrays in {target.parent} ({err.strerror}); "
                            f"set HYPERLAB_CACHE_DIR to a writable directory") from None
        try:
            for key, array in arrays.items():
                np.save(staging / f"{key}.npy", np.ascontiguousarray(array))
            meta = {**meta, "arrays": sorted(arrays)}
            (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
            try:
                staging.rename(target)
            except OSError:  # another process finished first; its copy is as good as ours
                if not (target / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((target / "meta.json").read_text())
    arrays = {key: np.load(target / f"{key}.npy", mmap_mode="r") for key in meta["arrays"]}
    return arrays, meta
