"""Forked worker processes, for the steps whose per-item Python work holds the GIL.

Native work (SHA-256, zstd, AES) releases the GIL, but with many small items the Python
around each one does not, and two threads measured barely faster than one. check's pack
readers and backup's file encoders therefore run in processes forked from the operation,
which inherit what they need (the key, the index) instead of receiving it.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from cairn import heap
from cairn.errors import CairnError


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


class WorkerFailed(CairnError):
    """A call raised in a worker process (its type and message, as text), or the worker
    exited before answering."""


class _Worker:
    __slots__ = ("process", "conn", "pending", "lock", "alive")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        #: Futures of the calls sent and not answered yet, in the order they were sent.
        self.pending: collections.deque[Future[Any]] = collections.deque()
        self.lock = threading.Lock()  # keeps ``pending`` in the order of the sends
        self.alive = True


def _serve(fn: Callable[[Any], Any], conn: Connection) -> None:
    """A worker's loop: answer each call with (True, result) or (False, error text)."""
    _ignore_sigint()
    while True:
        try:
            arg = conn.recv()
        except (EOFError, OSError):
            return
        if arg is None:
            return
        try:
            answer: tuple[bool, Any] = (True, fn(arg))
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
            answer = (False, f"{type(e).__name__}: {e}")
        conn.send(answer)


class PipePool:
    """Worker processes forked from this one, each calling ``fn`` on what it is sent
    through its own pipe.

    Lighter than ProcessPoolExecutor, which runs a manager thread and a feeder thread and
    shares one result queue (with a lock) between the workers: on 100,000 small files
    those cost the parent more of the GIL than the results themselves. Here one thread
    receives every answer and completes its future, so callbacks run in that thread. A
    call goes to the worker with the fewest unanswered calls.

    The garbage collector is frozen until :meth:`shutdown`: a child's collector would
    otherwise visit every object inherited from the parent and so copy each page holding
    one. The heap's free memory goes back to the kernel before the fork: shared with the
    children, each free page the parent reused afterwards was copied, the children keeping
    the original (a backup after the benchmark's day of changes to a copy of /usr peaked
    at 140-151 MiB, all processes, against 124-129 with the trim)."""

    def __init__(self, fn: Callable[[Any], Any], workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        gc.freeze()
        heap.trim()  # ~1 ms
        self._workers: list[_Worker] = []
        self._cancelling = False
        try:
            for _ in range(workers):
                mine, theirs = ctx.Pipe()
                process = ctx.Process(target=_serve, args=(fn, theirs), daemon=True)
                process.start()
                theirs.close()  # else the next child inherits it, and a death goes unseen
                self._workers.append(_Worker(process, mine))
        except BaseException:
            self._stop(cancel=True)
            gc.unfreeze()
            raise
        self._receiver = threading.Thread(
            target=self._receive, name="cairn-worker-results", daemon=True
        )
        self._receiver.start()

    def submit(self, arg: Any) -> Future[Any]:
        """Send ``arg`` to a worker; the future gets its answer (or :class:`WorkerFailed`)."""
        live = [w for w in self._workers if w.alive]
        if not live:
            raise WorkerFailed("every worker process has exited")
        worker = min(live, key=lambda w: len(w.pending))
        future: Future[Any] = Future()
        with worker.lock:
            worker.pending.append(future)
            try:
                worker.conn.send(arg)
            except OSError as e:  # it died: the receiver fails what it had
                with contextlib.suppress(ValueError):  # unless it already took this one
                    worker.pending.remove(future)
                raise WorkerFailed(f"a worker process exited ({e})") from e
        return future

    def _receive(self) -> None:
        conns = {w.conn: w for w in self._workers}
        while conns:
            for conn in mp_connection.wait(list(conns)):
                worker = conns[conn]  # type: ignore[index]
                try:
                    ok, value = worker.conn.recv()
                except Exception:  # noqa: BLE001 - EOF, or a message cut short by a kill
                    del conns[worker.conn]
                    self._lost(worker)
                    continue
                future = worker.pending.popleft()
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(WorkerFailed(value))

    def _lost(self, worker: _Worker) -> None:
        """A worker's pipe closed: its unanswered calls are cancelled when we are stopping
        it, failed otherwise (it died: killed, out of memory)."""
        worker.alive = False
        worker.process.join(1.0)
        with worker.lock:
            pending = list(worker.pending)
            worker.pending.clear()
        for future in pending:
            if self._cancelling:
                future.cancel()
            else:
                code = worker.process.exitcode
                future.set_exception(WorkerFailed(f"a worker process exited (code {code})"))

    def shutdown(self, *, cancel: bool) -> None:
        """Stop the workers: after their calls are answered, or at once with ``cancel``
        (their unanswered calls are then cancelled)."""
        try:
            self._stop(cancel)
            self._receiver.join()
        finally:
            gc.unfreeze()

    def _stop(self, cancel: bool) -> None:
        self._cancelling = cancel
        for w in self._workers:
            if cancel:
                w.process.terminate()
            else:
                with w.lock, contextlib.suppress(OSError):
                    w.conn.send(None)
        for w in self._workers:
            w.process.join()


_A = TypeVar("_A")


def as_answered(
    pool: PipePool,
    args: Iterable[_A],
    window: int,
    prepare: Callable[[_A], Any] = lambda arg: arg,
    meanwhile: Callable[[], None] | None = None,
) -> Iterator[tuple[_A, Future[Any]]]:
    """Call the pool on each of ``args`` (sent as ``prepare(arg)``), keeping ``window``
    calls unanswered, and yield each (arg, its finished future) as its answer comes, not
    in order: a worker that finishes early gets the next call at once, where taking the
    answers in order left one worker idle behind a long call of the other (``check`` of
    100k small files: one reader busy 2.3 s, the other 1.7). ``meanwhile`` runs once the
    first calls are sent. A call that cannot be sent yields a future holding the error."""
    running: dict[Future[Any], _A] = {}
    following = iter(args)

    def send_next() -> None:
        for arg in following:
            try:
                future = pool.submit(prepare(arg))
            except WorkerFailed as e:
                future = Future()
                future.set_exception(e)
            running[future] = arg
            return

    for _ in range(window):
        send_next()
    if meanwhile is not None:
        meanwhile()
    while running:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            arg = running.pop(future)
            send_next()  # before the caller's work on this answer: keep the workers fed
            yield arg, future
