"""Writes to MLflow in order, off the caller's thread, retried while the store is unreachable.

A search's driver must not wait on MLflow for every result (its loop would slow with the store's
latency) nor end because a tracking server restarted. ``Outbox.submit(fn, *args)`` queues a call;
one thread runs the calls in the order they came; a call that fails on the connection is retried with
backoff for up to ``patience_s`` (a few minutes of outage lose nothing), a call that fails otherwise is
logged and dropped (one bad value must not stop the record of everything after it). ``on_idle`` runs
when the queue has been empty for ``idle_every_s``: a writer that buffers (metrics and tags, one batch
per run) sends its buffer then, so that a stream of results costs a request a second, not one each.
``submit_quietly`` queues a call without waking the thread, for the stream of results: they are taken
up with the next call that wakes it, or within ``idle_every_s`` (a result costs the caller an append, not
a hand-over of the interpreter to the writer's thread and back).
``close(timeout, *last)`` queues its last calls and takes no more: a call submitted after them (by a
thread that had not yet seen the end, such as a trial starting while a SIGTERM closes the record) is
dropped, never run after the record was closed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PATIENCE_S = 600.0
_STOP = object()


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says the store could not be reached (worth retrying), not that a call was wrong."""
    from mlflow.exceptions import MlflowException

    transient_names = ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "MaxRetryError",
                       "ProtocolError", "RemoteDisconnected", "OperationalError")
    if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in transient_names:
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        return error.get_http_status_code() >= 500 or any(
            word in text for word in ("Max retries", "Connection", "database is locked", "timed out"))
    return False


class Outbox:
    def __init__(self, patience_s: float = PATIENCE_S, name: str = "hyperlab-mlflow",
                 on_idle: Callable[[], None] | None = None, idle_every_s: float = 1.0):
        self._queue: collections.deque = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._on_idle = on_idle  # run when the queue has been empty a while: a writer sends what it buffered
        self._idle_every_s = idle_every_s
        self._patience_s = patience_s
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._sealed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, **kwargs) -> None:
        self._put((fn, args, kwargs), wake=True)

    def submit_quietly(self, fn: Callable, *args, **kwargs) -> None:
        self._put((fn, args, kwargs), wake=False)

    def _put(self, item, wake: bool) -> None:
        with self._lock:
            if self._sealed:
                log.debug("MLflow: %s came after the record was closed; not made", getattr(item[0], "__name__", item[0]))
                return
            self._pending += 1
            self._idle.clear()
            self._enqueue(item, wake)

    def _enqueue(self, item, wake: bool) -> None:
        with self._ready:
            self._queue.append(item)
            if wake:
                self._ready.notify()

    def _take(self, timeout: float):
        """The next item, waiting up to ``timeout`` for one; None when there is none."""
        with self._ready:
            if not self._queue:
                self._ready.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call submitted so far has run (or was dropped) and ``on_idle`` sent what
        they buffered; False on timeout."""
        with self._ready:
            self._ready.notify()  # quiet calls: taken up now
        return self._idle.wait(timeout)

    def close(self, timeout: float | None = None, *last: Callable) -> bool:
        """Run ``last`` after everything submitted so far, take no more calls, and wait for them all
        (False on timeout). Closing again waits for the first close's calls."""
        with self._lock:
            if not self._sealed:
                for fn in last:
                    self._pending += 1
                    self._idle.clear()
                    self._enqueue((fn, (), {}), wake=False)
                self._sealed = True
                self._enqueue(_STOP, wake=True)
        return self.flush(timeout)

    @property
    def pending(self) -> int:
        return self._pending

    def _run(self) -> None:
        buffered, sent = False, time.monotonic()  # calls ran since on_idle last did; when it did
        while True:
            busy = buffered and time.monotonic() - sent > 5 * self._idle_every_s  # send what is buffered anyway
            item = None if busy else self._take(self._idle_every_s)
            if item is None:
                if not buffered:
                    continue
                self._call(self._on_idle, (), {})
                buffered, sent = False, time.monotonic()
                self._mark_done(0)
                continue
            if item is _STOP:
                if buffered:
                    self._call(self._on_idle, (), {})
                self._mark_done(0)
                return
            fn, args, kwargs = item
            self._call(fn, args, kwargs)
            buffered = self._on_idle is not None
            self._mark_done(1, flushed=not buffered)

    def _mark_done(self, calls: int, flushed: bool = True) -> None:
        """``flush`` returns once every call has run and what they buffered was sent."""
        with self._lock:
            self._pending -= calls
            if self._pending == 0 and flushed:
                self._idle.set()

    def _call(self, fn, args, kwargs) -> None:
        deadline, delay = time.monotonic() + self._patience_s, 1.0
        while True:
            try:
                fn(*args, **kwargs)
                return
            except Exception as error:  # noqa: BLE001 - decided below: retry or drop, never crash the thread
                if not is_transient(error) or time.monotonic() > deadline:
                    log.error("MLflow: %s failed and was dropped: %s", getattr(fn, "__name__", fn), error)
                    return
                log.warning("MLflow unreachable (%s); retrying in %.0f s", type(error).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
