"""Download-and-verify: every fetched file is checked against its sha256 before it is kept.

A file already present under the data directory is used as is and nothing touches the network.
A missing file is downloaded into a temporary file beside its destination, hashed while it
streams, and renamed into place only when the hash matches; a mismatch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hyperlab.data.paths import is_writable
from hyperlab.errors import UserError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file a dataset needs: its name in the dataset folder, where it comes from (mirrors in
    order of preference) and its sha256."""

    name: str
    urls: tuple[str, ...]
    sha256: str


class ChecksumError(UserError):
    """A downloaded file did not match its published sha256 (it was discarded)."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_file(remote: RemoteFile, directory: Path, timeout: float = 60.0) -> Path:
    """Path of ``remote`` under ``directory``, downloading and verifying it if absent.

    Raises UserError naming the file, the directory to put it in and its URL when it is missing
    and cannot be downloaded, and ChecksumError when the download does not match its sha256.
    """
    path = Path(directory) / remote.name
    if path.is_file():
        return path
    failures = []
    for url in remote.urls:
        try:
            return download(url, path, remote.sha256, timeout)
        except ChecksumError as err:
            failures.append(str(err))
        except (urllib.error.URLError, OSError, ValueError) as err:  # offline, 404, read-only dir
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
    raise UserError(
        f"{remote.name} is missing from {path.parent} and could not be downloaded "
        f"({'; '.join(failures)}). Download it from {remote.urls[0]} and put it at {path} "
        f"(expected sha256 {remote.sha256}), or point --data-dir / HYPERLAB_DATA_DIR at a "
        f"directory that holds it.")


def download(url: str, path: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``path`` through a temporary file; keep it only if its sha256 matches."""
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not is_writable(existing):
        raise PermissionError(f"{existing} is read-only")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        print(f"hyperlab: downloading {url} -> {path}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"{url}: sha256 mismatch for {path.name}: expected {sha256}, "
                                f"got {digest.hexdigest()}; the download was discarded")
        os.replace(partial, path)
        return path
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
