"""SIGTERM, the preemption signal of Slurm and Kubernetes, handled like Ctrl-C: runs end KILLED, never RUNNING.

    preemption.install()                  # once, in the command-line entry point
    with preemption.deferred():           # a training loop that can stop cleanly at a step boundary
        ...
        if preemption.requested():        # after each step: save a checkpoint, then stop
            save(); raise preemption.Preempted()

Outside `deferred()`, SIGTERM raises `Preempted` (a KeyboardInterrupt) at once, so `tracking.start_run` ends the
runs KILLED and the command exits 143. Inside it, the signal is only recorded, and the loop stops at its next step
boundary: pre-training saves its checkpoint there, and the same command afterwards resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_CODE = 128 + signal.SIGTERM  # what a process killed by SIGTERM reports


class Preempted(KeyboardInterrupt):
    """The process received SIGTERM."""


_state = {"requested": False, "deferred": 0, "pid": None}


def install() -> None:
    """Route SIGTERM to `Preempted` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        _state["pid"] = os.getpid()
        signal.signal(signal.SIGTERM, _handler)


def _handler(signum, frame) -> None:
    if os.getpid() != _state["pid"]:  # a forked child
        if _in_data_loader_worker():
            return  # the main process stops it (at a step boundary)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # any other child (a multiprocessing pool's worker, which
        os.kill(os.getpid(), signal.SIGTERM)  # `Pool.terminate` stops with SIGTERM) dies as it would without us
        return
    _state["requested"] = True
    if not _state["deferred"]:
        raise Preempted("SIGTERM")


def _in_data_loader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def requested() -> bool:
    """Whether SIGTERM arrived (inside `deferred()`, where it does not interrupt)."""
    return _state["requested"]


@contextlib.contextmanager
def deferred():
    """Within this block SIGTERM is recorded instead of raised: the code polls `requested()`."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
    if _state["requested"] and not _state["deferred"]:
        raise Preempted("SIGTERM")
