"""Retry transient backend failures with exponential backoff, bounded and logged.

:class:`RetryBackend` wraps any Backend. A request that fails with a
:class:`~cairn.errors.TransientBackendError` (or a bare timeout / connection reset that a
backend let through) is repeated after a growing, jittered delay, up to a number of
attempts and a total time. Errors that a retry cannot cure are raised at once:
NotFound, AlreadyExists, Authentication, AppendOnly and every other non-transient error.

Retrying is safe because every operation is idempotent *in effect*, with two cases that
need care, both caused by a failure reported after the server did the work:

- ``save`` retried after the server stored the file answers AlreadyExistsError. Repository
  file names are the SHA-256 of the file's content (restic's rule; ``config`` is the only
  fixed name, and it may be replaced so it never raises AlreadyExists), and saves are
  atomic, so a complete file of the same name and the same size is the file we were saving:
  the retry counts as a success. A different size means a real conflict and is raised.
- ``remove`` retried after the server deleted the file answers NotFoundError: success.

Blocking calls cannot be cancelled from outside, so *detecting* a stalled request is the
inner backend's job (socket and ssh timeouts turn a stall into a transient error).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from cairn.backend.base import Backend, FileInfo, FileType, Handle
from cairn.errors import (
    AlreadyExistsError,
    AppendOnlyError,
    AuthenticationError,
    BackendError,
    NotFoundError,
)

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Never retried even if a backend marked one of them transient by mistake.
_FINAL = (NotFoundError, AlreadyExistsError, AuthenticationError, AppendOnlyError)


@dataclass(frozen=True)
class RetryEvent:
    """One failed attempt that will be retried (given to the ``log`` callback)."""

    operation: str  # e.g. "save data/ab/ab12..."
    attempt: int  # the attempt that failed, from 1
    error: BaseException
    delay: float  # seconds until the next attempt

    def __str__(self) -> str:
        return (
            f"{self.operation} failed (attempt {self.attempt}): {self.error}; "
            f"retrying in {self.delay:.2f}s"
        )


def is_transient(error: BaseException) -> bool:
    """True for failures a retry may cure."""
    if isinstance(error, _FINAL):
        return False
    if isinstance(error, BackendError):
        return error.transient
    # Built-in timeouts and resets that a backend did not translate.
    return isinstance(error, TimeoutError | ConnectionError)


class RetryBackend(Backend):
    """A Backend that retries the transient failures of ``inner``.

    ``attempts`` bounds the tries per request (the first one included), ``max_elapsed`` the
    seconds spent on one request including waits; the delay before retry *n* is
    ``min(max_delay, base_delay * 2**(n-1))`` scaled by a random factor in [0.5, 1]
    so that parallel workers do not retry in lockstep. ``log`` receives a
    :class:`RetryEvent` for every retry; each is also logged at WARNING on this module's logger.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 10,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        max_elapsed: float = 15 * 60.0,
        log: Callable[[RetryEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.location = inner.location
        self.connections = inner.connections
        self.read_span = inner.read_span
        self.fork_safe = inner.fork_safe
        self.consistent_listing = inner.consistent_listing
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_elapsed = max_elapsed
        self._log_cb = log
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def _delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        with self._rng_lock:
            return base * self._rng.uniform(0.5, 1.0)

    def _backoff(self, operation: str, error: BaseException, attempt: int, start: float) -> float:
        """The delay before retrying after ``error``; re-raises it when retrying is not allowed."""
        if not is_transient(error) or attempt >= self.attempts:
            raise error
        delay = self._delay(attempt)
        if self._clock() - start + delay > self.max_elapsed:
            raise error
        self._report(RetryEvent(operation, attempt, error, delay))
        return delay

    def _call(self, operation: str, fn: Callable[[int], T]) -> T:
        """Run ``fn(attempt)`` until it succeeds, fails for good, or the budget is spent."""
        start = self._clock()
        attempt = 1
        while True:
            try:
                return fn(attempt)
            except Exception as e:
                self._sleep(self._backoff(operation, e, attempt, start))
                attempt += 1

    def _report(self, event: RetryEvent) -> None:
        _log.warning("%s: %s", self.location, event)
        if self._log_cb is not None:
            self._log_cb(event)

    # --- Backend ---------------------------------------------------------------

    def create(self) -> None:
        self._call("create", lambda _: self.inner.create())

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        size = memoryview(data).nbytes

        def attempt(n: int) -> None:
            try:
                self.inner.save(handle, data)
            except AlreadyExistsError:
                # See the module docstring: on a retry, an earlier attempt may have stored
                # the file before its reply was lost; same name + same size = same file.
                if n > 1 and self.inner.stat(handle) == size:
                    return
                raise

        self._call(f"save {handle}", attempt)

    def temp_file(self, buffering: int) -> BinaryIO:
        return self.inner.temp_file(buffering)  # where the wrapped backend can keep it

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        def attempt(n: int) -> None:
            try:
                self.inner.save_file(handle, file, size)
            except AlreadyExistsError:
                if n > 1 and self.inner.stat(handle) == size:  # as in save()
                    return
                raise

        self._call(f"save {handle}", attempt)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(
            f"load {handle} at {offset}", lambda _: self.inner.load(handle, offset, length)
        )

    def stat(self, handle: Handle) -> int:
        return self._call(f"stat {handle}", lambda _: self.inner.stat(handle))

    def exists(self, handle: Handle) -> bool:
        # Delegate: a backend may answer this more cheaply or differently than stat (S3:
        # a missing bucket means "no such file" here, but is an error for stat).
        return self._call(f"stat {handle}", lambda _: self.inner.exists(handle))

    def remove(self, handle: Handle) -> None:
        def attempt(n: int) -> None:
            try:
                self.inner.remove(handle)
            except NotFoundError:
                if n == 1:
                    raise
                # an earlier attempt removed it and its answer was lost

        self._call(f"remove {handle}", attempt)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Stream the inner listing; a listing that breaks off is restarted and the names
        already yielded are skipped, so the caller sees each file exactly once."""
        seen: set[str] = set()
        start = self._clock()
        attempt = 1
        while True:
            try:
                for info in self.inner.list(file_type):
                    if info.name not in seen:
                        seen.add(info.name)
                        yield info
                return
            except Exception as e:
                self._sleep(self._backoff(f"list {file_type.value}", e, attempt, start))
                attempt += 1

    def close(self) -> None:
        self.inner.close()
