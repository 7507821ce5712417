"""Download-and-verify: every fetched file is checked against its sha256 before it is kept.

A file already present under the data directory is verified the same way, and nothing touches the
network. A missing file is downloaded into a temporary file beside its destination, hashed while it
streams, and renamed into place only when the hash matches; a mismatch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hyperlab.data.paths import file_sha256, is_writable
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
    return file_sha256(path)


def ensure_file(remote: RemoteFile, directory: Path, timeout: float = 60.0) -> Path:
    """Path of ``remote`` under ``directory``, verified against its sha256; downloaded first if absent.

    A present file that does not match (tampered with, truncated, another version) is refused, never
    read. Raises UserError naming the file, the directory to put it in and its URL when it is missing
    and cannot be downloaded, and ChecksumError when a download or a present file does not match.
    """
    path = Path(directory) / remote.name
    if path.is_file():
        found = sha256_of(path)
        if found != remote.sha256:
            raise ChecksumError(f"{path} does not match the published sha256 of {remote.name} (expected "
                                f"{remote.sha256}, got {found}); it was not read. Remove it to download it "
                                f"again from {remote.urls[0]}")
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
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = False
    try:
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        kept = _fetch(url, fd, partial, path, sha256, timeout)
        return path
    finally:
        if not kept:  # a failed download leaves no empty folders behind either
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _fetch(url: str, fd: int, partial: str, path: Path, sha256: str, timeout: float) -> bool:
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
        return True
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
