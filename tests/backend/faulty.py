"""A fault-injecting Backend wrapper for tests: some requests fail or stall.

A failure is injected either *before* the request reaches the inner backend (nothing
happened) or *after* it did its work (the work happened, the answer was lost) — the second
kind is what makes retries tricky (a retried save meets its own file). Listings may break
off half-way. A stall sleeps and then fails with a bare ``TimeoutError``, modelling a
request that hangs until the transport's timeout fires.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from cairn.backend.base import Backend, FileInfo, FileType, Handle
from cairn.errors import TransientBackendError

T = TypeVar("T")


class FaultyBackend(Backend):
    """Wraps ``inner``; a ``fail_rate`` fraction of requests fail, ``stall_rate`` stall."""

    def __init__(
        self,
        inner: Backend,
        fail_rate: float = 0.1,
        stall_rate: float = 0.0,
        stall_seconds: float = 0.05,
        seed: int | None = None,
    ) -> None:
        self.inner = inner
        self.location = f"faulty({inner.location})"
        self.connections = inner.connections
        self.read_span = inner.read_span
        self.fail_rate = fail_rate
        self.stall_rate = stall_rate
        self.stall_seconds = stall_seconds
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        #: How many faults of each kind were injected ("before", "after", "stall", "list").
        self.injected: Counter[str] = Counter()

    def _roll(self) -> str | None:
        """Decide this request's fate: None (no fault), "before", "after" or "stall"."""
        with self._lock:
            r = self._rng.random()
            if r < self.stall_rate:
                fate = "stall"
            elif r < self.stall_rate + self.fail_rate:
                fate = "before" if self._rng.random() < 0.5 else "after"
            else:
                return None
            if fate != "after":
                # an "after" fault is counted where it is raised: when the request itself
                # fails (a retried save that finds its file, a retried remove that finds
                # none) the fault never happens, and nothing would report it
                self.injected[fate] += 1
            return fate

    def _count(self, fate: str) -> None:
        with self._lock:
            self.injected[fate] += 1

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        fate = self._roll()
        if fate == "stall":
            time.sleep(self.stall_seconds)
            raise TimeoutError(f"injected stall: {what} timed out")
        if fate == "before":
            raise TransientBackendError(f"injected fault before {what}")
        result = fn()
        if fate == "after":
            self._count("after")
            raise TransientBackendError(f"injected fault after {what} (it was done)")
        return result

    def create(self) -> None:
        self._run("create", self.inner.create)

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        self._run(f"save {handle}", lambda: self.inner.save(handle, data))

    def temp_file(self, buffering: int) -> BinaryIO:
        return self.inner.temp_file(buffering)  # where the wrapped backend can keep it

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        self._run(f"save {handle}", lambda: self.inner.save_file(handle, file, size))

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(f"load {handle}", lambda: self.inner.load(handle, offset, length))

    def stat(self, handle: Handle) -> int:
        return self._run(f"stat {handle}", lambda: self.inner.stat(handle))

    def remove(self, handle: Handle) -> None:
        self._run(f"remove {handle}", lambda: self.inner.remove(handle))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        fate = self._roll()
        if fate == "stall":
            time.sleep(self.stall_seconds)
            raise TimeoutError(f"injected stall: list {file_type.value} timed out")
        if fate == "before":
            raise TransientBackendError(f"injected fault before list {file_type.value}")
        items = self.inner.list(file_type)
        if fate == "after":
            # break off after yielding about half of the entries
            entries = list(items)
            with self._lock:
                self.injected["after"] += 1
                self.injected["list"] += 1
            yield from entries[: len(entries) // 2]
            raise TransientBackendError(f"injected fault in the middle of list {file_type}")
        yield from items

    def close(self) -> None:
        self.inner.close()
