"""Progress of a restore, reported through a callback (never printed here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RestoreProgress:
    """A snapshot of the counters. ``phase`` is "plan", "content", "metadata" or "verify"."""

    phase: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[RestoreProgress], None]


class ProgressTracker:
    """Thread-safe counters; callbacks are serialised (never two at once)."""

    def __init__(self, callback: ProgressCallback | None, files_total: int, bytes_total: int):
        self._callback = callback
        self._lock = threading.Lock()
        self._state = RestoreProgress("content", 0, files_total, 0, bytes_total)

    @property
    def state(self) -> RestoreProgress:
        return self._state

    def set_phase(self, phase: str, *, reset: bool = False) -> None:
        with self._lock:
            s = self._state
            self._state = replace(
                s,
                phase=phase,
                files_done=0 if reset else s.files_done,
                bytes_done=0 if reset else s.bytes_done,
            )
            self._emit()

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            s = self._state
            self._state = replace(
                s, files_done=s.files_done + files, bytes_done=s.bytes_done + nbytes
            )
            self._emit()

    def _emit(self) -> None:
        if self._callback is not None:
            self._callback(self._state)
