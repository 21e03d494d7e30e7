"""Helpers shared by the end-to-end tests of the HTTP-based remote backends (REST, rclone,
S3): a small but varied source tree, the comparison of a restore with it, the single
error line a failure must print, and a cross-check that cairn and restic agree on a
repository reached through the same server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import cairn_env, run_cairn
from tests.treecompare import describe

#: Runs restic against the repository under test with extra arguments.
Restic = Callable[..., subprocess.CompletedProcess[bytes]]


def make_source(root: Path, *, big: int = 3 << 20) -> Path:
    """Nested directories with text, random (several chunks), empty and duplicate files, a
    symlink, a hard link, an empty directory, odd names and permissions."""
    deeper = root / "sub" / "deeper"
    deeper.mkdir(parents=True)
    (root / "empty-dir").mkdir()
    for i in range(30):
        where = root / "sub" if i % 2 else deeper
        (where / f"f{i:02d}.txt").write_bytes(f"line {i} of a text file\n".encode() * (i * 40))
    (root / "big.bin").write_bytes(os.urandom(big))
    (root / "big-copy.bin").write_bytes((root / "big.bin").read_bytes())
    (root / "empty").write_bytes(b"")
    (root / "name with spaces & ünïcödé.txt").write_text("odd name\n")
    secret = root / "secret.txt"
    secret.write_text("mode 0600\n")
    secret.chmod(0o600)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.symlink("big.bin", root / "link")
    os.link(root / "sub" / "f01.txt", root / "hardlink.txt")
    return root


def restored(target: Path, src: Path) -> dict[bytes, dict[str, object]]:
    """``describe`` of ``src`` as restored below ``target`` (restic keeps the full path)."""
    return describe(target / str(src).lstrip("/"))


def one_error_line(stderr: bytes) -> str:
    """The single ``cairn: ...`` line a failure must print, and nothing like a traceback."""
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("cairn:")]
    assert len(lines) == 1, text
    return lines[0]


def timed_failure(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run a cairn command that must fail: exit code, its one error line, seconds taken."""
    start = time.monotonic()
    proc = run_cairn(*args, env=env, expect=None)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout
    return proc.returncode, one_error_line(proc.stderr), elapsed


def cairn_snapshot_ids(*global_args: str, env: dict[str, str] | None = None) -> list[str]:
    out = run_cairn(*global_args, "--json", "snapshots", env=env).stdout
    return [s["id"] for s in json.loads(out)]


def round_trip(
    cairn_args: list[str],
    restic: Restic,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
) -> None:
    """The whole exchange through one server: cairn creates, backs up, lists, checks every
    byte and restores; restic checks every byte and restores what cairn wrote; restic adds
    a snapshot and cairn restores that one."""
    src = make_source(tmp_path / "src")
    run_cairn(*cairn_args, "init", env=env)
    run_cairn(*cairn_args, "backup", str(src), env=env)
    ids = cairn_snapshot_ids(*cairn_args, env=env)
    assert len(ids) == 1
    run_cairn(*cairn_args, "check", "--read-data", env=env)
    run_cairn(*cairn_args, "restore", "latest", "--target", str(tmp_path / "c1"), env=env)
    assert restored(tmp_path / "c1", src) == describe(src)

    assert b"no errors were found" in restic("check", "--read-data").stdout
    restic("restore", ids[0], "--target", str(tmp_path / "r1"))
    assert restored(tmp_path / "r1", src) == describe(src)

    (src / "sub" / "added-by-restic.txt").write_text("restic was here\n")
    restic("backup", str(src))
    latest = json.loads(restic("snapshots", "--json").stdout)[-1]["id"]
    assert latest not in ids
    run_cairn(*cairn_args, "restore", latest, "--target", str(tmp_path / "c2"), env=env)
    assert restored(tmp_path / "c2", src) == describe(src)


def restic_created(
    cairn_args: list[str],
    restic: Restic,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
) -> None:
    """restic creates the repository and backs up; cairn restores it exactly, then adds
    its own snapshot on top, which restic checks."""
    src = make_source(tmp_path / "src", big=1 << 20)
    restic("init")
    restic("backup", str(src))
    run_cairn(*cairn_args, "restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert restored(tmp_path / "out", src) == describe(src)
    (src / "added-by-cairn.txt").write_text("cairn was here\n")
    run_cairn(*cairn_args, "backup", str(src), env=env)
    assert len(json.loads(restic("snapshots", "--json").stdout)) == 2
    assert b"no errors were found" in restic("check", "--read-data").stdout


def landed_packs(repo: Path) -> int:
    """Pack files in a repository directory, not counting uploads still in progress."""
    return sum(1 for p in (repo / "data").rglob("*") if p.is_file() and "-temp-" not in p.name)


def backup_in_background(
    *global_args: str, src: Path, repo: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cairn backup src`` and return once two packs have landed in ``repo`` (the
    server's directory), the backup still running: the moment to take its server away."""
    backup = subprocess.Popen(
        [sys.executable, "-m", "cairn", *global_args, "--json", "backup", str(src)],
        env=cairn_env(**(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and landed_packs(repo) < 2 and backup.poll() is None:
        time.sleep(0.01)
    assert backup.poll() is None, "the backup finished before its server could be killed"
    return backup
