"""The local cache as users meet it (flags, environment, what it saves), and the recovery
of packs a killed backup uploaded without an index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cairn.backend.base import FileType
from cairn.backend.local import LocalBackend
from cairn.cli.context import GlobalOptions
from cairn.ops.backup import BackupOptions, backup
from tests.cli.conftest import cairn_env, run_cairn
from tests.conftest import run_restic
from tests.repo.test_cache import CountingBackend


def _summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    return [doc for doc in lines if doc.get("message_type") == "summary"][-1]


def _tree(root: Path, dirs: int = 20, files: int = 15) -> Path:
    for d in range(dirs):
        sub = root / f"dir{d:02d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"file{f:02d}.txt").write_text(f"{d}/{f}\n" * (50 + f))
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    return root


def _repo_id(repo: Path) -> str:
    return str(json.loads(run_cairn("--json", "cat", "config", repo=repo).stdout)["id"])


def _ids(path: Path) -> set[str]:
    return {p.name for p in path.rglob("*") if p.is_file() and len(p.name) == 64}


def test_cache_location_flags_and_environment(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", dirs=2, files=2)
    repo = tmp_path / "repo"
    home = tmp_path / "home"
    run_cairn("init", repo=repo, env={"HOME": str(home)})
    rid = _repo_id(repo)

    # Default: ~/.cache/cairn (or $XDG_CACHE_HOME/cairn), tagged for backup tools.
    run_cairn("backup", str(src), repo=repo, env={"HOME": str(home)})
    default = home / ".cache" / "cairn"
    assert (
        (default / "CACHEDIR.TAG")
        .read_bytes()
        .startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    )
    cached = _ids(default / rid)
    assert _ids(repo / "snapshots") <= cached and _ids(repo / "index") <= cached
    run_cairn(
        "snapshots", repo=repo, env={"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "x")}
    )
    assert _ids(tmp_path / "x" / "cairn" / rid) == _ids(repo / "snapshots")

    # CAIRN_CACHE_DIR beats RESTIC_CACHE_DIR; --cache-dir beats both; --no-cache uses none.
    envs = {"HOME": str(home), "CAIRN_CACHE_DIR": str(tmp_path / "c1")}
    run_cairn("snapshots", repo=repo, env={**envs, "RESTIC_CACHE_DIR": str(tmp_path / "r")})
    run_cairn("snapshots", repo=repo, env={"RESTIC_CACHE_DIR": str(tmp_path / "r")})
    run_cairn("--cache-dir", str(tmp_path / "c2"), "snapshots", repo=repo, env=envs)
    run_cairn("--no-cache", "--cache-dir", str(tmp_path / "c3"), "snapshots", repo=repo)
    assert (tmp_path / "c1" / rid).is_dir() and (tmp_path / "r" / rid).is_dir()
    assert (tmp_path / "c2" / rid).is_dir() and not (tmp_path / "c3").exists()

    # An unusable cache directory costs a warning, never the command.
    (tmp_path / "blocked").write_text("not a directory")
    proc = run_cairn("--cache-dir", str(tmp_path / "blocked"), "snapshots", repo=repo)
    assert b"continuing without a cache" in proc.stderr

    # The layout is restic's: restic reads through a cache cairn filled.
    out = run_restic(repo, "snapshots", "--json", env={"RESTIC_CACHE_DIR": str(tmp_path / "c2")})
    assert len(json.loads(out.stdout)) == 1


def _measured_backup(
    repo: Path, src: Path, cache_dir: Path | None, monkeypatch: pytest.MonkeyPatch
) -> Counter[FileType]:
    """One backup in this process through the CLI's repository opening; bytes read by type."""
    counting = CountingBackend(LocalBackend(repo))
    monkeypatch.setattr(GlobalOptions, "backend", lambda self: counting)
    monkeypatch.setenv("CAIRN_PASSWORD", "pw")
    g = GlobalOptions(repo=str(repo), cache_dir=str(cache_dir), no_cache=cache_dir is None)
    with g.open_repository() as r:
        result = backup(r, [str(src)], BackupOptions())
    assert result.stats.data_blobs == 0 and result.stats.files_unmodified > 300
    return counting.bytes_read


def test_no_change_incremental_backup_reads_almost_nothing_with_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    cache = tmp_path / "cache"
    run_cairn("--cache-dir", str(cache), "backup", str(src), repo=repo)

    # Each backup may store new trees for /tmp and the like (other processes change their
    # metadata); those it wrote itself are cached, so measure the cached run first.
    with_cache = _measured_backup(repo, src, cache, monkeypatch)
    without = _measured_backup(repo, src, None, monkeypatch)
    total_without = sum(without.values())
    total_with = sum(with_cache.values())
    # Only the config, the key file and lock files are read; no index, snapshot or pack.
    assert set(with_cache) <= {FileType.CONFIG, FileType.KEY, FileType.LOCK}, with_cache
    assert total_with < 4096 and total_without > 10 * total_with, (without, with_cache)
    assert without[FileType.PACK] > 0 and without[FileType.INDEX] > 0
    print(f"\nno-change backup read: {total_without} B without cache, {total_with} B with")


def test_packs_left_without_an_index_are_indexed_not_uploaded_again(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", dirs=3, files=3)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    first = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    # As if the backup had been killed after its packs landed, before its index did.
    for p in (repo / "index").iterdir():
        p.chmod(0o600)
        p.unlink()
    second = _summary(run_cairn("--json", "--no-cache", "backup", str(src), repo=repo))
    assert second["backup_type"] == "incremental" and second["parent"] == first["snapshot_id"]
    assert second["data_blobs"] == 0 and second["files_unmodified"] == 10
    assert second["data_added_packed"] < 10_000  # only the trees of changed parent dirs
    # Every pack is in an index again, and restic agrees.
    check = run_restic(repo, "check", "--read-data")
    assert b"no errors were found" in check.stdout and b"not referenced in any index" not in (
        check.stdout + check.stderr
    )


def test_kill_9_during_backup_then_the_next_backup_uploads_only_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sizes = 5 * (20 << 20)
    for i in range(5):
        (src / f"f{i}.bin").write_bytes(os.urandom(20 << 20))
    repo = tmp_path / "repo"
    cache = tmp_path / "cache"
    run_cairn("init", repo=repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "--json", "backup", str(src)],
        env=cairn_env(repo, CAIRN_CACHE_DIR=str(cache)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(_ids(repo / "data")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list((repo / "snapshots").iterdir()) == []
    landed = sum(p.stat().st_size for p in (repo / "data").rglob("*") if len(p.name) == 64)
    # A pack closes before a blob would take it past 16 MiB and a blob is at most 8 MiB, so
    # each of the two packs that landed holds more than 8 MiB.
    assert landed > 2 * (8 << 20)

    run_restic(repo, "unlock")
    summary = _summary(
        run_cairn("--json", "backup", str(src), repo=repo, env={"CAIRN_CACHE_DIR": str(cache)})
    )
    assert summary["data_added_packed"] < sizes * 1.01 - landed * 0.99
    assert summary["total_bytes_processed"] == sizes
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    run_cairn("restore", "latest", "--target", str(tmp_path / "back"), repo=repo)
    back = tmp_path / "back" / str(src).lstrip("/")
    for i in range(5):
        assert (back / f"f{i}.bin").read_bytes() == (src / f"f{i}.bin").read_bytes()
