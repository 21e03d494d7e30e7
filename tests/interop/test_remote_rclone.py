"""cairn and restic sharing a repository through ``rclone:`` (each starts its own
``rclone serve restic --stdio`` child), through the real CLI: a plain path and a
configured remote, restic's repository continued by cairn, an append-only child, the
failures users meet, and the child dying in the middle of a backup."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.conftest import run_cairn
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


def rclone_env(tmp_path: Path) -> dict[str, str]:
    """An rclone config with one remote, ``store``, a local directory; and our own caches."""
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[store]\ntype = local\n\n[elsewhere]\ntype = alias\nremote = {tmp_path}\n")
    return {
        "RCLONE_CONFIG": str(conf),
        "CAIRN_CACHE_DIR": str(tmp_path / "cairn-cache"),
        "RESTIC_CACHE_DIR": str(tmp_path / "restic-cache"),
    }


def restic_on(url: str, env: dict[str, str]) -> Restic:
    def restic(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_restic(url, *args, env=env)

    return restic


def test_cairn_and_restic_share_a_repository_through_rclone(tmp_path: Path) -> None:
    env = rclone_env(tmp_path)
    url = f"rclone:{tmp_path / 'repo'}"
    round_trip(["-r", url], restic_on(url, env), tmp_path, env=env)
    assert (tmp_path / "repo" / "config").is_file()


def test_configured_remote_and_a_repository_restic_created(tmp_path: Path) -> None:
    env = rclone_env(tmp_path)
    url = "rclone:elsewhere:nested/repo"
    restic_created(["-r", url], restic_on(url, env), tmp_path, env=env)
    assert (tmp_path / "nested" / "repo" / "config").is_file()


def test_append_only_child(tmp_path: Path) -> None:
    """``rclone serve restic --append-only`` behind rclone.args: backups work, deleting a
    key is refused with a message that says why, locks are still released."""
    env = rclone_env(tmp_path)
    args = [
        "-r", f"rclone:{tmp_path / 'repo'}",
        "-o", "rclone.args=serve restic --stdio --append-only",
    ]  # fmt: skip
    src = make_source(tmp_path / "src", big=1 << 20)
    run_cairn(*args, "init", env=env)
    run_cairn(*args, "backup", str(src), env=env)
    run_cairn(*args, "backup", str(src), env=env)
    new_password = tmp_path / "new-password"
    new_password.write_text("new\n")
    code, line, _ = timed_failure(
        *args, "key", "passwd", "--new-password-file", str(new_password), env=env
    )
    assert code == 1
    assert "append-only" in line, line
    assert not list((tmp_path / "repo" / "locks").iterdir())
    assert len(list((tmp_path / "repo" / "snapshots").iterdir())) == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-r", "rclone:"], "needs a remote"),
        (["-r", "rclone:nosuchremote:repo"], "didn't find section in config file"),
        (["-r", "rclone:store:/r", "-o", "rclone.program=/no/such/rclone"], "was not found"),
        (["-r", "rclone:store:/r", "-o", "rclone.args=serve restic --stdio --bogus"], "bogus"),
        (["-r", "rclone:store:/r", "-o", "rclone.connections=0"], "positive number"),
    ],
)
def test_bad_locations(args: list[str], expected: str, tmp_path: Path) -> None:
    code, line, elapsed = timed_failure(*args, "snapshots", env=rclone_env(tmp_path))
    assert code in (1, 2)  # 2: a bad option value (usage error)
    assert expected in line, line
    assert elapsed < 10


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_rclone_killed_mid_backup(tmp_path: Path) -> None:
    env = rclone_env(tmp_path)
    repo = tmp_path / "repo"
    url = f"rclone:{repo}"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}.bin").write_bytes(os.urandom(16 << 20))
    run_cairn("-r", url, "init", env=env)
    backup = backup_in_background("-r", url, src=src, repo=repo, env=env)
    children = _children(backup.pid)
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = backup.communicate(timeout=60)
    assert time.monotonic() - killed < 10, "the backup hangs after rclone died"
    assert backup.returncode == 1
    line = one_error_line(stderr)
    assert "rclone exited with status -9" in line, line
    assert not list((repo / "snapshots").iterdir())

    restic = restic_on(url, env)
    run_cairn("-r", url, "unlock", env=env)
    assert b"no errors were found" in restic("check", "--read-data").stdout
    run_cairn("-r", url, "backup", str(src), env=env)
    assert b"no errors were found" in restic("check", "--read-data").stdout
    assert len(list((repo / "snapshots").iterdir())) == 1
