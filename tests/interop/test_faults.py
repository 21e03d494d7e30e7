"""A backup and a restore through a backend that fails 10% of its requests and stalls 2%,
retried under the policy remote backends get: the backup completes, the real restic finds
every byte in order (``check --read-data``) and restores the source exactly, and so does
cairn through the same faults."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.backend.base import Backend
from cairn.backend.local import LocalBackend
from cairn.backend.wrap import RetryPolicy, with_retries
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import restore
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from tests.backend.faulty import FaultyBackend
from tests.conftest import TEST_KDF, run_restic
from tests.treecompare import describe

PASSWORD = "pw"
#: Fast waits: the policy's shape (attempts, doubling, jitter) with test-sized delays.
FAST = RetryPolicy(attempts=12, base_delay=0.002, max_delay=0.02, max_elapsed=60.0)


def make_source(root: Path, seed: int) -> Path:
    """~4 MiB in 300 files of mixed sizes (some empty, some spanning several chunks) in
    nested directories, plus a few duplicates so that deduplication is exercised."""
    rng = random.Random(seed)
    for i in range(300):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 100, 5_000, 20_000, 60_000])
        (d / f"f{i:03d}.bin").write_bytes(rng.randbytes(size))
    (root / "big.bin").write_bytes(rng.randbytes(2_500_000))
    (root / "big-copy.bin").write_bytes((root / "big.bin").read_bytes())
    return root


class Faults:
    """A local repository reached through FaultyBackend and the retry policy; collects
    what was injected and what the retry layer logged."""

    def __init__(self, path: Path, seed: int) -> None:
        self.faulty = FaultyBackend(
            LocalBackend(path), fail_rate=0.1, stall_rate=0.02, stall_seconds=0.01, seed=seed
        )
        self.lines: list[str] = []
        self.backend: Backend = with_retries(self.faulty, FAST, log=self.lines.append)


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Faults]:
    f = Faults(tmp_path / "repo", seed=4)
    yield f
    f.backend.close()


def test_backup_and_restore_through_faults(tmp_path: Path, faults: Faults) -> None:
    src = make_source(tmp_path / "src", seed=1)
    repo = Repository.init(faults.backend, PASSWORD, kdf=KdfParams(*TEST_KDF))
    repo.close()
    with Repository.open(faults.backend, PASSWORD) as repo:
        repo.pack_size = 64 << 10  # many packs: many saves that can fail
        result = backup(repo, [str(src)], BackupOptions())
    assert result.snapshot_id and not result.incomplete
    assert result.stats.files_new == 302

    injected = dict(faults.faulty.injected)
    # ~100 requests (one per 64 KiB pack, plus keys, locks, index, snapshot)
    assert sum(injected.values()) >= 5 and {"before", "after"} <= set(injected), injected
    # every fault was retried, and said so in one line
    assert len(faults.lines) >= sum(injected.values()) - injected.get("list", 0)
    assert all("\n" not in line and "retrying in" in line for line in faults.lines)

    # restic: every pack, blob and index entry is right; the restore equals the source
    repo_path = tmp_path / "repo"
    check = run_restic(repo_path, "check", "--read-data")
    assert b"no errors were found" in check.stdout
    run_restic(repo_path, "restore", "latest", "--target", str(tmp_path / "by-restic"))
    source = describe(src)
    assert describe(tmp_path / "by-restic" / str(src).lstrip("/")) == source

    # cairn restores through the same faults (ranged loads, listings broken off half-way)
    before = sum(faults.faulty.injected.values())
    with Repository.open(faults.backend, PASSWORD) as repo:
        report = restore(repo, "latest", str(tmp_path / "by-cairn"))
    assert not report.errors
    assert sum(faults.faulty.injected.values()) > before + 3
    assert faults.faulty.injected["stall"] > 0
    assert describe(tmp_path / "by-cairn" / str(src).lstrip("/")) == source


def test_second_backup_through_faults_adds_only_changes(tmp_path: Path, faults: Faults) -> None:
    """An incremental backup over faults: the parent is found through broken listings,
    unchanged files are not read again, and restic still checks every byte."""
    src = make_source(tmp_path / "src", seed=2)
    Repository.init(faults.backend, PASSWORD, kdf=KdfParams(*TEST_KDF)).close()
    with Repository.open(faults.backend, PASSWORD) as repo:
        repo.pack_size = 256 << 10
        first = backup(repo, [str(src)], BackupOptions())
    (src / "d1" / "new.bin").write_bytes(os.urandom(300_000))
    with Repository.open(faults.backend, PASSWORD) as repo:
        repo.pack_size = 256 << 10
        second = backup(repo, [str(src)], BackupOptions())
    assert second.parent_id == first.snapshot_id
    assert second.stats.files_new == 1 and second.stats.files_unmodified == 302
    assert 300_000 <= second.stats.data_added < 400_000
    check = run_restic(tmp_path / "repo", "check", "--read-data")
    assert b"no errors were found" in check.stdout
