"""cairn and restic sharing a repository on a real REST server (``rclone serve restic``),
through the real CLI: round trips both ways, an append-only server, the failures users
meet (bad URLs, refused or silent ports, wrong credentials) and a server that dies in the
middle of a backup and comes back on the same port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.backend.radosgw import free_port
from tests.backend.rclone_server import RestServer, rclone_path, rclone_rest_server
from tests.cli.conftest import cairn_env, run_cairn
from tests.conftest import run_restic
from tests.interop.remote_common import (
    Restic,
    backup_in_background,
    make_source,
    one_error_line,
    restic_created,
    round_trip,
    timed_failure,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestServer]:
    root = tmp_path / "srv"
    root.mkdir()
    with rclone_rest_server(root) as srv:
        yield srv


def cache_env(tmp_path: Path) -> dict[str, str]:
    """A cache of this test's own (a REST URL gives run_cairn no directory to use)."""
    return {"CAIRN_CACHE_DIR": str(tmp_path / "cairn-cache")}


def restic_on(url: str, tmp_path: Path) -> Restic:
    """restic against ``url`` with a cache in ``tmp_path``."""

    def restic(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_restic(url, *args, env={"RESTIC_CACHE_DIR": str(tmp_path / "restic-cache")})

    return restic


# --- round trips ------------------------------------------------------------------------


def test_cairn_and_restic_share_a_repository_over_rest(server: RestServer, tmp_path: Path) -> None:
    url = server.repo_url("repo")
    round_trip(["-r", url], restic_on(url, tmp_path), tmp_path, env=cache_env(tmp_path))


def test_cairn_continues_a_repository_restic_created_over_rest(
    server: RestServer, tmp_path: Path
) -> None:
    url = server.repo_url("repo")
    restic_created(["-r", url], restic_on(url, tmp_path), tmp_path, env=cache_env(tmp_path))


# --- append-only server -------------------------------------------------------------------


def test_append_only_server(tmp_path: Path) -> None:
    """Backups work and keep working; deleting a key is refused with a message that names
    the cause; locks (which append-only servers let go) are released and unlocked."""
    root = tmp_path / "srv"
    root.mkdir()
    env = cache_env(tmp_path)
    src = make_source(tmp_path / "src", big=1 << 20)
    with rclone_rest_server(root, append_only=True) as srv:
        url = srv.repo_url("repo")
        run_cairn("-r", url, "init", env=env)
        run_cairn("-r", url, "backup", str(src / "sub"), env=env)
        run_cairn("-r", url, "backup", str(src), env=env)
        locks = root / "repo" / "locks"
        assert not list(locks.iterdir()), "each backup removes its own lock"

        new_password = tmp_path / "new-password"
        new_password.write_text("new\n")
        proc = run_cairn(
            "-r", url, "key", "passwd", "--new-password-file", str(new_password),
            env=env, expect=None,
        )  # fmt: skip
        assert proc.returncode == 1
        line = one_error_line(proc.stderr)
        assert "append-only" in line and "the new password works" in line, line
        # nothing was lost: the old key still opens the repository, and so does the new one
        assert len(list((root / "repo" / "keys").iterdir())) == 2
        run_cairn("-r", url, "snapshots", env=env)
        run_cairn("-r", url, "snapshots", env=env, password="new")
        assert not list(locks.iterdir())

        # a backup killed while it holds its lock leaves it behind; unlock removes it
        holder = subprocess.Popen(
            [sys.executable, "-m", "cairn", "-r", url, "backup", "--stdin"],
            env=cairn_env(**env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not list(locks.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(locks.iterdir()), "the backup did not take its lock"
        finally:
            holder.kill()
            holder.wait()
        out = run_cairn("-r", url, "unlock", env=env)
        assert b"removed 1 lock" in out.stderr
        assert not list(locks.iterdir())

        restic = restic_on(url, tmp_path)
        assert b"no errors were found" in restic("check", "--read-data").stdout
        assert b"2 snapshots" in restic("snapshots").stdout


# --- bad input: one line, an exit code, within a bounded time -----------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo:bar/repo", "unknown repository scheme 'foo'"),
        ("rest:127.0.0.1:8000/repo", "invalid REST URL"),
        ("rest:http//127.0.0.1:8000/repo", "invalid REST URL"),
        ("rest:http://127.0.0.1:99999/repo", "invalid REST URL"),
        ("rest:http:///repo", "invalid REST URL"),
        ("rest:ftp://127.0.0.1/repo", "invalid REST URL"),
    ],
)
def test_bad_urls(url: str, expected: str, tmp_path: Path) -> None:
    code, line, elapsed = timed_failure("-r", url, "snapshots", env=cache_env(tmp_path))
    assert code == 1
    assert expected in line, line
    assert elapsed < 10


def test_refused_port_fails_fast(tmp_path: Path) -> None:
    url = f"rest:http://127.0.0.1:{free_port()}/repo"
    for command in (["init"], ["snapshots"], ["backup", str(tmp_path)]):
        code, line, elapsed = timed_failure("-r", url, *command, env=cache_env(tmp_path))
        assert code == 1
        assert "cannot connect (connection refused)" in line, line
        assert elapsed < 10, f"{command}: {elapsed:.1f}s"


def test_silent_server_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    """A port that accepts TCP but never answers HTTP (a wedged host, another service):
    the first answer is awaited only as long as a connection (10 s), not minutes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes handshakes; nobody ever answers
        port = listener.getsockname()[1]
        code, line, elapsed = timed_failure(
            "-r", f"rest:http://127.0.0.1:{port}/repo", "snapshots", env=cache_env(tmp_path)
        )
    assert code == 1
    assert "no answer within 10s" in line, line
    assert elapsed < 20


def test_wrong_credentials(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    env = cache_env(tmp_path)
    with rclone_rest_server(root, user="alice", password="s3cret") as srv:
        good = srv.repo_url("repo")
        wrong = good.replace("alice:s3cret@", "alice:guess@")
        anonymous = srv.repo_url("repo", credentials=False)
        for url in (wrong, anonymous):
            code, line, elapsed = timed_failure("-r", url, "init", env=env)
            assert code == 1
            assert "refused the credentials" in line, line
            assert "guess" not in line, "the password must not be shown"
            assert elapsed < 10
        assert not (root / "repo").exists()
        run_cairn("-r", good, "init", env=env)
        code, line, _ = timed_failure("-r", wrong, "snapshots", env=env)
        assert code == 1 and "refused the credentials" in line
        run_cairn("-r", good, "snapshots", env=env)


# --- the server dies in the middle of a backup ----------------------------------------------


@contextmanager
def rest_server_on(root: Path, port: int) -> Iterator[str]:
    """``rclone serve restic`` on a fixed port (so that it can come back on the same one),
    killed with SIGKILL when the block ends unless already gone."""
    proc = subprocess.Popen(
        [rclone_path(), "serve", "restic", "--cache-objects=false",
         "--addr", f"127.0.0.1:{port}", str(root)],
        env=dict(os.environ, RCLONE_CONFIG=str(root.parent / "rclone-none.conf")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready = threading.Event()

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if re.search(rb"Serving restic REST API", line):
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        assert ready.wait(20), "rclone serve restic did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_server_killed_mid_backup_and_back_on_the_same_port(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    repo = root / "repo"
    env = cache_env(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}.bin").write_bytes(os.urandom(16 << 20))
    port = free_port()
    url = f"rest:http://127.0.0.1:{port}/repo"
    with rest_server_on(root, port):
        run_cairn("-r", url, "init", env=env)
    with rest_server_on(root, port):
        backup = backup_in_background("-r", url, src=src, repo=repo, env=env)
    # (the server is gone: SIGKILL, no goodbye)
    killed = time.monotonic()
    with suppress(subprocess.TimeoutExpired):
        backup.wait(timeout=10)
    if backup.returncode is not None:
        # No retries: one clear line, promptly.
        assert time.monotonic() - killed < 10, "the backup hangs after the server died"
        stderr = backup.stderr.read() if backup.stderr else b""
        assert backup.returncode == 1
        line = one_error_line(stderr)
        assert f"127.0.0.1:{port}" in line and ("connect" in line or "connection" in line), line
        assert not list((repo / "snapshots").iterdir())
        with rest_server_on(root, port) as base:
            restic = restic_on(f"rest:{base}/repo", tmp_path)
            # the repository is valid; the lock left behind is stale and unlock removes it
            run_cairn("-r", url, "unlock", env=env)
            assert b"no errors were found" in restic("check", "--read-data").stdout
            # and the next backup completes
            run_cairn("-r", url, "backup", str(src), env=env)
            run_cairn("-r", url, "check", env=env)
            assert b"no errors were found" in restic("check", "--read-data").stdout
            assert b"1 snapshots" in restic("snapshots").stdout
    else:
        # Retried: with the server back on the same port, the same backup completes.
        with rest_server_on(root, port) as base:
            _, stderr = backup.communicate(timeout=120)
            assert backup.returncode == 0, stderr
            assert b"retrying" in stderr
            run_cairn("-r", url, "check", env=env)
            restic = restic_on(f"rest:{base}/repo", tmp_path)
            assert b"no errors were found" in restic("check", "--read-data").stdout
            assert b"1 snapshots" in restic("snapshots").stdout
