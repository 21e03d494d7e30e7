"""Names for the kernel's view of a thread (Linux): ``top -H``, ``ps -L`` and
``/proc/PID/task/TID/comm`` show it, where every Python thread is otherwise called after
the program. The benchmark reads it to charge the progress display for its own CPU time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

_PR_SET_NAME = 15
#: the kernel keeps 15 bytes and a NUL
_MAX_NAME = 15


@functools.cache
def _prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
        return prctl
    except (OSError, AttributeError):  # not Linux with glibc: nothing to name
        return None


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) where the system supports it."""
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_NAME, name.encode()[:_MAX_NAME], 0, 0, 0)
