"""Forked worker processes, for the steps whose per-item Python work holds the GIL.

Native work (SHA-256, zstd, AES) releases the GIL, but with many small items the Python
around each one does not, and two threads measured barely faster than one. check's pack
readers and backup's file encoders therefore run in processes forked from the operation,
which inherit what they need (the key, the index) instead of receiving it.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fork_available() -> bool:
    """Whether forked workers can help: fork() exists and there is more than one core."""
    return "fork" in multiprocessing.get_all_start_methods() and cores() > 1


def _ignore_sigint() -> None:
    """In a worker: Ctrl-C reaches the whole process group, and the parent alone handles
    it (a child would print a traceback from its idle wait)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes forked from this one (at its first submit).

    The garbage collector is frozen first: a child's collector would otherwise visit every
    object inherited from the parent and so copy each page holding one. Call
    :func:`release_pool` when done, which thaws it again."""
    gc.freeze()
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_ignore_sigint
    )


def release_pool(pool: ProcessPoolExecutor, *, cancel: bool) -> None:
    """Wait for the workers to exit; with ``cancel``, drop the calls not started yet."""
    try:
        pool.shutdown(wait=True, cancel_futures=cancel)
    finally:
        gc.unfreeze()
