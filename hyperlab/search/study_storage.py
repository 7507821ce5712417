"""Where a search's Optuna study is stored, and how it is opened.

* A file path (no ``://``), the local default ``optuna.log`` beside the MLflow store: Optuna's journal
  storage, an append-only log of the study's operations. ``optuna-dashboard PATH`` and
  ``optuna.load_study(storage=JournalStorage(JournalFileBackend(PATH)))`` read it. An operation costs the
  driver a JSON line (about 0.3 ms of its interpreter) where a database costs it an ORM round trip (an ask
  of three parameters about 28 ms in sqlite): the study is written on every suggestion and every end, so
  this is most of what a search's record costs per trial.
* An SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``): Optuna's RDB storage, for a database
  that several machines reach (a cluster's head, a team's server).

Appends to a journal are serialised by ``flock`` on a lock file beside it: the kernel lets go of the
lock when its holder dies, so a driver killed mid-write never leaves a stale lock for the next one to
wait out (Optuna's default symlink lock is forcibly taken over only after 30 s). A line is written with
one ``write`` to a file opened for appending, so a reader that takes no lock (optuna-dashboard) never
sees a torn line either, and not synced to the disk (``JournalFile``).

The lease that keeps one driver per search (``hyperlab.search.lease``) needs a database: for a journal
it is a sqlite file beside it (``optuna-leases.db`` beside ``optuna.log``).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from hyperlab.tracking.mlflow_sql import write_ahead


def is_journal(spec: str) -> bool:
    return "://" not in spec


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file for a path, Optuna's RDB storage for a URL."""
    if is_journal(spec):
        return JournalStorage(JournalFile(spec))
    return rdb_storage(spec)


def lease_url(spec: str) -> str:
    """The database of the search's lease: the study's own, or a sqlite file beside a journal."""
    if is_journal(spec):
        path = Path(spec)
        return f"sqlite:///{path.with_name(path.stem + '-leases.db')}"
    return spec


def local_path(spec: str) -> Path | None:
    """The local file holding the study (a journal, a sqlite database), else None."""
    if is_journal(spec):
        return Path(spec)
    if spec.startswith("sqlite:///"):
        return Path(spec.removeprefix("sqlite:///"))
    return None


class FlockLock(JournalFileOpenLock):
    """An exclusive ``flock`` on ``path`` (created once, never removed): released by the kernel when the
    holder's process ends, however it ends. One of Optuna's public lock classes with its two methods (all
    that the journal backend calls) replaced."""

    def __init__(self, path: str):  # noqa: D107 - not the parent's: no lock file to create and remove
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file releases its lock


class JournalFile(JournalFileBackend):
    """Optuna's journal file (its format, read by its own backend), a batch of operations appended under
    the ``FlockLock`` with one ``write`` and no ``fsync``: once written, the lines are the kernel's, so a
    driver killed at any moment loses none of them, as the MLflow store's commits in write-ahead-log mode;
    only a machine that loses power can lose the last ones. Optuna's backend syncs every operation to the
    disk (about 0.25 ms each, a trial's ask and tell some eight of them)."""

    def __init__(self, path: str):
        self._path, self._flock = path, FlockLock(path + ".flock")
        super().__init__(path, lock_obj=self._flock)

    def append_logs(self, logs: list[dict]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self._flock.acquire()
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                while data:  # one write, but for a disk that fills up midway
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        finally:
            self._flock.release()


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on ``url``; a sqlite file in write-ahead-log mode (readers such as
    optuna-dashboard never block the driver, and a commit need not wait for the disk)."""
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # connections opened before the listener: reopened with it
    return storage


def _sqlite_pragmas(connection, record) -> None:
    write_ahead(connection)
