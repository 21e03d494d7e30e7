"""Repository locks, restic's protocol (spec §11).

Acquire: list and read every lock; conflict if ours is exclusive and any lock exists, or if
any existing lock is exclusive (stale ones included: only ``unlock`` removes those). Write
ours, wait 200 ms, check again ignoring ours; on a conflict now, remove ours and fail.
Hold: a background thread writes a fresh lock file every 5 minutes and then removes the
previous one. Release: stop the thread, remove the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from cairn.backend.base import FileType, Handle
from cairn.errors import CairnError, FormatError, NotFoundError, RepositoryLockedError
from cairn.repo.files import FileStore
from cairn.repo.gojson import format_time, go_string, parse_time
from cairn.repo.node import GoTime

#: restic re-checks this long after writing its lock file, so that a lock another client
#: wrote at the same moment has reached the listing. Two clients that each list after
#: writing their own lock always see one of the two locks (whoever lists last sees the
#: other's), so where a listing shows every saved file at once the wait can be zero
#: (Backend.consistent_listing); a restic on the other side still waits its 200 ms.
RECHECK_DELAY = 0.2
#: restic refreshes every 5 minutes.
REFRESH_INTERVAL = 300.0
#: A lock older than this is stale.
STALE_AGE = 30 * 60


def _username() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _now() -> GoTime:
    ns = time.time_ns()
    return GoTime.from_ns(ns, time.localtime(ns // 1_000_000_000).tm_gmtoff)


@dataclass(frozen=True)
class LockInfo:
    """The content of one lock file."""

    time: GoTime
    exclusive: bool
    hostname: str
    username: str
    pid: int
    uid: int = 0
    gid: int = 0

    @classmethod
    def current(cls, exclusive: bool) -> LockInfo:
        return cls(
            _now(),
            exclusive,
            socket.gethostname(),
            _username(),
            os.getpid(),
            os.getuid() if hasattr(os, "getuid") else 0,
            os.getgid() if hasattr(os, "getgid") else 0,
        )

    def encode(self) -> bytes:
        """restic's compact JSON (uid/gid omitted when 0), no trailing newline."""
        text = (
            f'{{"time":"{format_time(self.time)}",'
            f'"exclusive":{"true" if self.exclusive else "false"},'
            f'"hostname":{go_string(self.hostname)},"username":{go_string(self.username)},'
            f'"pid":{self.pid}'
        )
        if self.uid:
            text += f',"uid":{self.uid}'
        if self.gid:
            text += f',"gid":{self.gid}'
        return (text + "}").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> LockInfo:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return cls(
                time=parse_time(doc["time"]),
                exclusive=bool(doc.get("exclusive", False)),
                hostname=str(doc.get("hostname") or ""),
                username=str(doc.get("username") or ""),
                pid=int(doc.get("pid") or 0),
                uid=int(doc.get("uid") or 0),
                gid=int(doc.get("gid") or 0),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"invalid lock file: {e}") from e

    def age(self, now: float | None = None) -> float:
        """Seconds since the lock was written or last refreshed."""
        return (time.time() if now is None else now) - self.time.to_ns() / 1e9

    def is_stale(self, now: float | None = None) -> bool:
        """restic's rule: older than 30 minutes, or from this host and its process is gone."""
        if self.age(now) > STALE_AGE:
            return True
        if self.hostname != socket.gethostname():
            return False
        return not _process_exists(self.pid)

    def describe(self, now: float | None = None) -> str:
        """For error messages: who holds it and since when."""
        kind = "exclusive" if self.exclusive else "shared"
        age = int(self.age(now))
        return (
            f"{kind} lock by PID {self.pid} on {self.hostname or '?'} "
            f"(user {self.username or '?'}), created {format_time(self.time)} ({age}s ago)"
        )


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # restic sends SIGHUP; signal 0 probes without side effects
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def iter_locks(files: FileStore) -> Iterator[tuple[str, LockInfo | None]]:
    """Every lock file with its content; None for one that cannot be read (restic 0.14
    ignores those when acquiring)."""
    for fi in files.backend.list(FileType.LOCK):
        try:
            yield fi.name, LockInfo.decode(files.load(FileType.LOCK, fi.name))
        except NotFoundError:
            continue  # released while we listed
        except CairnError:
            yield fi.name, None


def _conflict(files: FileStore, exclusive: bool, own: str | None) -> tuple[str, LockInfo] | None:
    for name, info in iter_locks(files):
        if name == own or info is None:
            continue
        if exclusive or info.exclusive:
            return name, info
    return None


class Lock:
    """A held lock; use as a context manager. Refreshed in the background until released."""

    def __init__(
        self,
        files: FileStore,
        exclusive: bool = False,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        on_refresh_error: Callable[[Exception], None] | None = None,
        recheck_delay: float = RECHECK_DELAY,
    ) -> None:
        self.files = files
        self.exclusive = exclusive
        self.refresh_interval = refresh_interval
        self.recheck_delay = recheck_delay
        self.on_refresh_error = on_refresh_error
        #: The current lock file's name (changes on every refresh).
        self.name: str | None = None
        self.refresh_error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._recheck: threading.Thread | None = None
        self._recheck_error: BaseException | None = None
        self._conflict: BaseException | None = None

    def acquire(self, *, defer_recheck: bool = False) -> Lock:
        """Take the lock or raise RepositoryLockedError naming the holder.

        Like restic, a second look for other locks follows ``recheck_delay`` after the
        lock file is written, to catch a lock taken at the same moment. With ``defer_recheck``
        that look runs in the background and :meth:`confirm` waits for it: the caller
        reads (snapshots, index) meanwhile and must confirm before it changes anything."""
        self._raise_if_conflict(None)
        name = self.files.save(FileType.LOCK, LockInfo.current(self.exclusive).encode())
        if defer_recheck:
            self.name = name
            self._recheck = threading.Thread(
                target=self._recheck_later, name="cairn-lock-recheck", daemon=True
            )
            self._recheck.start()
        else:
            time.sleep(self.recheck_delay)
            try:
                self._raise_if_conflict(name)
            except BaseException:
                self._remove(name)
                raise
            self.name = name
        self._thread = threading.Thread(
            target=self._refresher, name="cairn-lock-refresh", daemon=True
        )
        self._thread.start()
        return self

    def _recheck_later(self) -> None:
        if self._stop.wait(self.recheck_delay):
            return  # released before the delay was over
        try:
            with self._mutex:
                own = self.name
            self._raise_if_conflict(own)
        except BaseException as e:  # kept for confirm(), which raises it in the caller
            self._recheck_error = e

    def confirm(self) -> None:
        """Wait for a deferred recheck; when it found another lock, release ours and raise
        what it found, then and on every later call (a caller that goes on after the first
        error must still not write). Does nothing after an immediate recheck."""
        if self._recheck is not None:
            self._recheck.join()
            self._recheck = None
            if self._recheck_error is not None:
                self._conflict = self._recheck_error
                self.release()
        if self._conflict is not None:
            raise self._conflict

    def _raise_if_conflict(self, own: str | None) -> None:
        hit = _conflict(self.files, self.exclusive, own)
        if hit is None:
            return
        name, info = hit
        stale = " It looks stale; `cairn unlock` removes it." if info.is_stale() else ""
        raise RepositoryLockedError(
            f"repository is already locked: {info.describe()} (lock {name[:8]}).{stale}"
        )

    def _remove(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.files.backend.remove(Handle(FileType.LOCK, name))

    def refresh(self) -> None:
        """Write a new lock file with the current time, then remove the previous one."""
        with self._mutex:
            if self.name is None:
                return
            old = self.name
            self.name = self.files.save(FileType.LOCK, LockInfo.current(self.exclusive).encode())
        self._remove(old)

    def _refresher(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception as e:  # a failed refresh must not kill the process
                self.refresh_error = e
                if self.on_refresh_error is not None:
                    self.on_refresh_error(e)

    def release(self) -> None:
        """Stop refreshing and remove the lock file."""
        self._stop.set()
        for thread in (self._thread, self._recheck):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        with self._mutex:
            name, self.name = self.name, None
        if name is not None:
            self._remove(name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.confirm()  # a conflict is never left unreported, even by a reader
        self.release()


def remove_stale_locks(files: FileStore, remove_all: bool = False) -> list[str]:
    """`unlock`: remove stale locks (or every lock with ``remove_all``); returns their names.
    Unreadable lock files are removed only with ``remove_all``."""
    removed = []
    now = time.time()
    for name, info in iter_locks(files):
        if remove_all or (info is not None and info.is_stale(now)):
            try:
                files.backend.remove(Handle(FileType.LOCK, name))
            except NotFoundError:
                continue
            removed.append(name)
    return removed


class NoLock:
    """Stands in for a Lock under ``--no-lock``: the same ``with`` and ``confirm()``."""

    def confirm(self) -> None:
        return None

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
