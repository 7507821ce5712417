"""One driver per search: a lease in the search's Optuna database, taken atomically, kept alive by a
heartbeat, and lost when the driver dies.

A row ``(search, holder, expires)`` in the table ``hyperlab_leases``: taking it is an INSERT (the
primary key makes two takers of a free name one winner) or, when the holder's lease has run out, an
UPDATE that names the old holder (a compare-and-set: two takers of a dead lease, one winner). The
holder renews it every ``RENEW_S`` seconds for ``TTL_S`` more. A holder on this host whose process is
gone has lost its lease at once (no need to wait for it to run out). SQLAlchemy Core, so any database
Optuna's RDB storage takes (sqlite, PostgreSQL, MySQL) holds it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from hyperlab.errors import UserError

TTL_S = 60.0
RENEW_S = 10.0

_META = sa.MetaData()
LEASES = sa.Table(
    "hyperlab_leases", _META,
    sa.Column("search", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(500), nullable=False),  # JSON: host, pid, started
    sa.Column("expires", sa.Float, nullable=False),        # unix time
)


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time())

    def dumps(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Holder:
        data = json.loads(text)
        return cls(data["host"], int(data["pid"]), float(data["started"]))

    def is_gone(self) -> bool:
        """True when the holder runs on this host and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host} (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))})"


class LeaseHeld(UserError):
    """Another live driver holds the search."""


def engine(url: str) -> sa.Engine:
    """An engine on the search's Optuna database (sqlite waits for a writer's lock instead of failing)."""
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


class Lease:
    """``search``'s lease in ``url``'s database, held by this process after ``acquire``."""

    def __init__(self, url: str, search: str):
        self.url, self.search = url, search
        self.holder = Holder.me()
        self._engine = engine(url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _META.create_all(self._engine, checkfirst=True)

    def current(self) -> tuple[Holder, float] | None:
        """(holder, expiry) of the lease as stored, None when nobody holds it."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(LEASES.c.holder, LEASES.c.expires)
                               .where(LEASES.c.search == self.search)).first()
        return (Holder.loads(row.holder), row.expires) if row else None

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the live holder."""
        now = time.time()
        mine = self.holder.dumps()
        with self._engine.begin() as conn:
            try:
                conn.execute(LEASES.insert().values(search=self.search, holder=mine, expires=now + TTL_S))
                return
            except sa.exc.IntegrityError:
                pass
        found = self.current()
        if found is None:  # released between our insert and our read: try once more
            return self.acquire()
        other, expires = found
        if expires > now and not other.is_gone():
            raise LeaseHeld(f"search {self.search!r} is being run by {other}; wait for it to end, or stop it "
                            f"(a dead driver's claim runs out {max(0, int(expires - now))} s after its last heartbeat)")
        with self._engine.begin() as conn:  # compare-and-set: only if it is still the dead holder's
            taken = conn.execute(LEASES.update().where(
                (LEASES.c.search == self.search) & (LEASES.c.holder == other.dumps()))
                .values(holder=mine, expires=now + TTL_S)).rowcount
        if taken != 1:
            raise LeaseHeld(f"search {self.search!r} was just taken by another driver")

    def keep_alive(self) -> None:
        """Renew the lease every RENEW_S seconds from a daemon thread until ``release``."""
        def beat():
            while not self._stop.wait(RENEW_S):
                try:
                    self.renew()
                except sa.exc.SQLAlchemyError:
                    pass  # the database is away for a moment: the lease holds for TTL_S

        self._thread = threading.Thread(target=beat, name="hyperlab-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(LEASES.update().where((LEASES.c.search == self.search)
                                               & (LEASES.c.holder == self.holder.dumps()))
                         .values(expires=time.time() + TTL_S))

    def release(self) -> None:
        self._stop.set()
        with self._engine.begin() as conn:
            conn.execute(LEASES.delete().where((LEASES.c.search == self.search)
                                               & (LEASES.c.holder == self.holder.dumps())))
        self._engine.dispose()
