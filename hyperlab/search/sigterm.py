"""SIGTERM (``kill``, ``ray job stop``, a scheduler's stop) ends a search KILLED and resumable, and the
driver with exit code 143, even when the signal reached Ray's own processes too and the driver's main
thread is stuck in a call to them: SIGTERM is blocked in every thread but one that waits for it
(``sigwait``), runs ``ON_TERMINATE`` and exits.

The block is set by the command line before anything starts a thread (importing torch or pyarrow does):
a thread started earlier would take the signal to Python's handler in the main thread instead, which
runs only between the main thread's bytecodes. Standard library only, so that importing it starts none.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

ON_TERMINATE: list = []
"""What a SIGTERM runs, in order, before the driver exits: seal the study, close the record, release the lease."""
TERMINATING = threading.Event()
"""Set when SIGTERM has come: its thread closes the record, KILLED, and exits."""
_WATCHER: list[threading.Thread] = []


@contextlib.contextmanager
def sigterm_ends_cleanly():
    """For the block: SIGTERM blocked in this thread (the main one, before any other starts: they inherit
    the block), and the one thread that waits for it started. The main thread's mask is restored after it:
    a caller that runs a command in its own process (a test) and then starts processes of its own must not
    hand them a blocked SIGTERM, which they would inherit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if not _WATCHER:
        _WATCHER.append(threading.Thread(target=_wait_for_sigterm, name="hyperlab-sigterm", daemon=True))
        _WATCHER[0].start()
    try:
        yield
    finally:
        if signal.SIGTERM not in before:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _wait_for_sigterm() -> None:
    signal.sigwait({signal.SIGTERM})
    TERMINATING.set()
    print("hyperlab: terminated", file=sys.stderr)  # what it ends, ON_TERMINATE says
    for cleanup in list(ON_TERMINATE):
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - exiting anyway; what could be closed was
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143)


def unless_terminating() -> None:
    """Once SIGTERM has come the record is its thread's to close (KILLED, open trial runs closed), not the
    main thread's: Tune's ``fit`` may return because the signal stopped Ray's processes too, and a close
    made from there would be taken for the search's end. The main thread waits for the exit."""
    if TERMINATING.is_set():
        threading.Event().wait()
