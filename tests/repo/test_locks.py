"""Locks: restic's protocol, honoured both ways (spec §11, §19 check 14)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.backend.base import FileType
from cairn.errors import RepositoryLockedError
from cairn.repo.lock import Lock, LockInfo, iter_locks
from cairn.repo.node import GoTime
from cairn.repo.repository import Repository
from tests.conftest import restic_path, run_restic
from tests.repo.repo_util import PASSWORD, new_repo


def lock_names(repo: Repository) -> set[str]:
    return {fi.name for fi in repo.backend.list(FileType.LOCK)}


def foreign_lock(
    repo: Repository, exclusive: bool, *, age: float = 0, host: str = "other-host", pid: int = 4242
) -> str:
    """A lock file in restic's JSON form, as another restic process would write it."""
    ns = time.time_ns() - int(age * 1e9)
    info = LockInfo(GoTime.from_ns(ns), exclusive, host, "someone", pid)
    return repo.files.save(FileType.LOCK, info.encode())


def test_restic_prune_refused_while_cairn_holds_shared_lock(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    with repo.lock(exclusive=False):
        assert len(lock_names(repo)) == 1
        proc = run_restic(path, "prune", password=PASSWORD, check=False)
        assert proc.returncode != 0
        assert b"repository is already locked" in proc.stderr
        # A shared restic operation is fine alongside a shared lock.
        run_restic(path, "snapshots", password=PASSWORD)
    assert lock_names(repo) == set()


def test_cairn_refused_while_restic_style_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    foreign_lock(repo, exclusive=True)
    # restic itself reads this file as a lock: a sanity check of the JSON form.
    proc = run_restic(path, "snapshots", password=PASSWORD, check=False)
    assert b"repository is already locked exclusively" in proc.stderr
    for exclusive in (False, True):
        with pytest.raises(RepositoryLockedError) as err:
            repo.lock(exclusive=exclusive)
        msg = str(err.value)
        assert "exclusive lock by PID 4242 on other-host (user someone)" in msg
    assert len(lock_names(repo)) == 1  # our attempts left nothing behind


def test_exclusive_needs_no_other_lock(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    foreign_lock(repo, exclusive=False)
    with repo.lock(exclusive=False):
        pass
    with pytest.raises(RepositoryLockedError, match="shared lock"):
        repo.lock(exclusive=True)


def test_lock_written_by_restic_blocks_cairn(tmp_path: Path) -> None:
    """`restic key passwd` takes an exclusive lock, then waits for the new password on
    stdin: while it waits, cairn must refuse both kinds of lock."""
    path = tmp_path / "r"
    repo = new_repo(path)
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [restic_path(), "-r", str(path), "key", "passwd"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not lock_names(repo) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_names(repo), "restic did not take its lock"
        for exclusive in (False, True):
            with pytest.raises(RepositoryLockedError, match=f"exclusive lock by PID {proc.pid}"):
                repo.lock(exclusive=exclusive)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: restic gives up and removes its lock
        proc.wait(timeout=20)
    assert lock_names(repo) == set()


def test_conflict_appearing_during_recheck_removes_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path / "r")
    real_sleep = time.sleep

    def racing_sleep(seconds: float) -> None:
        foreign_lock(repo, exclusive=True)
        real_sleep(0)

    monkeypatch.setattr("cairn.repo.lock.time.sleep", racing_sleep)
    with pytest.raises(RepositoryLockedError):
        repo.lock()
    infos = [info for _, info in iter_locks(repo.files)]
    assert len(infos) == 1 and infos[0] is not None and infos[0].hostname == "other-host"


def lagging_repo(path: Path) -> Repository:
    """A repository whose backend says its listings may lag (a network file system, an
    object store): locks wait restic's 0.2 s before their second look."""
    repo = new_repo(path)
    repo.backend.consistent_listing = False
    return repo


def test_a_local_disk_needs_no_recheck_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a local disk every listing shows a lock file once written, so the second look
    comes at once, and still finds a lock written before it."""
    repo = new_repo(tmp_path / "r")
    assert repo.backend.consistent_listing  # pytest's tmp_path is on a local disk
    slept: list[float] = []
    real_sleep = time.sleep

    def racing_sleep(seconds: float) -> None:
        slept.append(seconds)
        foreign_lock(repo, exclusive=True)  # written between our lock and our second look
        real_sleep(0)

    monkeypatch.setattr("cairn.repo.lock.time.sleep", racing_sleep)
    with pytest.raises(RepositoryLockedError):
        repo.lock()
    assert slept == [0.0]
    assert [i.hostname for _, i in iter_locks(repo.files) if i] == ["other-host"]


def test_deferred_recheck_reports_a_racing_lock_at_confirm(tmp_path: Path) -> None:
    """With the recheck deferred, a lock taken during the delay is still found: confirm()
    raises, and our own lock file is gone before anything was written."""
    repo = lagging_repo(tmp_path / "r")
    held = repo.lock(defer_recheck=True)
    foreign_lock(repo, exclusive=True)  # lands inside the 0.2 s recheck delay
    with pytest.raises(RepositoryLockedError):
        held.confirm()
    infos = [info for _, info in iter_locks(repo.files)]
    assert len(infos) == 1 and infos[0] is not None and infos[0].hostname == "other-host"


def test_deferred_recheck_is_confirmed_on_exit_when_the_caller_forgot(tmp_path: Path) -> None:
    repo = lagging_repo(tmp_path / "r")
    with pytest.raises(RepositoryLockedError), repo.lock(exclusive=True, defer_recheck=True):
        foreign_lock(repo, exclusive=False)
    assert [i.hostname for _, i in iter_locks(repo.files) if i] == ["other-host"]


def test_deferred_recheck_without_conflict_holds_the_lock(tmp_path: Path) -> None:
    repo = lagging_repo(tmp_path / "r")
    started = time.monotonic()
    with repo.lock(defer_recheck=True) as held:
        returned = time.monotonic() - started
        held.confirm()
        waited = time.monotonic() - started
        assert len(lock_names(repo)) == 1
    assert lock_names(repo) == set()
    # the delay was spent in confirm(), not in taking the lock
    assert returned < waited and waited >= 0.2


def test_refresh_replaces_lock_file(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    lk = Lock(repo.files, exclusive=True, refresh_interval=0.05).acquire()
    first = lk.name
    deadline = time.monotonic() + 5
    while lk.name == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lk.name != first
    lk.release()
    assert lock_names(repo) == set()
    assert lk.refresh_error is None


@pytest.fixture
def ignore_sighup() -> Iterator[None]:
    """restic probes a same-host lock's PID with SIGHUP (it ignores SIGHUP itself); a
    process holding a lock must survive that, so the CLI has to ignore it too."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.mark.usefixtures("ignore_sighup")
def test_stale_rules_and_unlock(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    host = socket.gethostname()
    old = foreign_lock(repo, exclusive=False, age=31 * 60)
    dead = foreign_lock(repo, exclusive=False, host=host, pid=_dead_pid())
    alive = foreign_lock(repo, exclusive=False, host=host, pid=os.getpid())
    remote = foreign_lock(repo, exclusive=False, host="elsewhere")
    # Stale locks still block acquisition; only unlock removes them.
    with pytest.raises(RepositoryLockedError):
        repo.lock(exclusive=True)
    # restic's unlock removes exactly the stale ones...
    run_restic(path, "unlock", password=PASSWORD)
    assert lock_names(repo) == {alive, remote}
    # ...and cairn's unlock agrees.
    old = foreign_lock(repo, exclusive=True, age=31 * 60)
    dead = foreign_lock(repo, exclusive=False, host=host, pid=_dead_pid())
    assert set(repo.unlock()) == {old, dead}
    assert lock_names(repo) == {alive, remote}
    assert set(repo.unlock(remove_all=True)) == {alive, remote}


@pytest.mark.usefixtures("ignore_sighup")
def test_restic_unlock_keeps_live_cairn_lock(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    lk = repo.lock()
    run_restic(path, "unlock", password=PASSWORD)
    assert lk.name in lock_names(repo)  # our process is alive: not stale
    lk.release()


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_backup_writes_nothing_when_a_lock_appears_during_the_recheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup walks during the recheck delay, but its first write waits for the
    recheck: with an exclusive lock taken at the same moment (restic's prune, say), no
    pack, index or snapshot lands, and our lock is removed."""
    from cairn.ops.backup import BackupOptions, backup

    repo = lagging_repo(tmp_path / "r")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(50_000))
    real_acquire = Lock.acquire

    def racing_acquire(self: Lock, **kw: bool) -> Lock:
        held = real_acquire(self, **kw)
        foreign_lock(repo, exclusive=True)  # inside the 0.2 s recheck delay
        return held

    monkeypatch.setattr(Lock, "acquire", racing_acquire)
    with pytest.raises(RepositoryLockedError):
        backup(repo, [str(src)], BackupOptions())
    repo.close()
    for kind in (FileType.PACK, FileType.INDEX, FileType.SNAPSHOT):
        assert list(repo.backend.list(kind)) == [], kind
    assert [i.hostname for _, i in iter_locks(repo.files) if i] == ["other-host"]
