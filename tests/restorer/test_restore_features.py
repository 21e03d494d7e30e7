"""Restore behaviour on the v2 fixture: include/exclude, SNAPSHOT:subpath, sparse files,
--verify, damaged packs, unwritable targets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cairn.errors import PathNotFoundError, RestoreError, UsageError
from cairn.ops.restore import restore, verify_restored
from cairn.repo.repository import Repository
from cairn.restorer.writer import SPARSE_SEGMENT, ZERO_CHUNK_ID, write_blob
from tests.restorer.helpers import (
    compare_with_dataset,
    expected_dataset,
    flip_byte,
    open_repo,
    scan,
)

pytestmark = pytest.mark.usefixtures("content_writers")

SNAP1 = "495607a5"
DATASET1 = expected_dataset("1", reduced=False)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A restore target beside (not around) the extracted fixture repository."""
    return tmp_path / "out"


@pytest.fixture
def v2(fixture_repo: Any) -> Any:
    repo = open_repo(fixture_repo("v2"))
    yield repo
    repo.close()


def _subset(paths: set[bytes]) -> dict[bytes, dict[str, Any]]:
    return {p: DATASET1[p] for p in paths}


def test_include_single_file(v2: Repository, out: Path) -> None:
    result = restore(v2, SNAP1, str(out), include=["/binary/zeros-2MiB.bin"])
    assert result.errors == []
    want = _subset({b"binary", b"binary/zeros-2MiB.bin"})
    assert compare_with_dataset(out, want) == []  # the parent keeps its mtime too


def test_include_relative_glob_matches_anywhere(v2: Repository, out: Path) -> None:
    result = restore(v2, SNAP1, str(out), include=["*.txt"])
    assert result.errors == []
    got = set(scan(out))
    txt = {p for p, e in DATASET1.items() if e["type"] == "file" and p.endswith(b".txt")}
    assert b"deep/a/b/c/d/leaf.txt" in txt
    parents = {p.rsplit(b"/", i)[0] for p in txt for i in range(1, p.count(b"/") + 1)}
    assert got == txt | parents
    assert b"empty-dir" not in got
    assert compare_with_dataset(out, _subset(got)) == []


def test_include_directory_and_double_star(v2: Repository, out: Path) -> None:
    a, b = out / "a", out / "b"
    assert restore(v2, SNAP1, str(a), include=["/deep"]).errors == []
    assert set(scan(a)) == {p for p in DATASET1 if p.startswith(b"deep")}
    assert restore(v2, SNAP1, str(b), include=["/deep/**/leaf.txt"]).errors == []
    assert b"deep/a/b/c/d/leaf.txt" in scan(b)
    assert set(scan(b)) == {p for p in DATASET1 if p.startswith(b"deep")}


def test_exclude_patterns(v2: Repository, out: Path) -> None:
    result = restore(v2, SNAP1, str(out), exclude=["names", "*.bin", "/big"])
    assert result.errors == []
    want = {p for p in DATASET1 if not p.startswith((b"names", b"big")) and not p.endswith(b".bin")}
    assert set(scan(out)) == want
    assert compare_with_dataset(out, _subset(want)) == []


def test_include_and_exclude_together_is_a_usage_error(v2: Repository, out: Path) -> None:
    with pytest.raises(UsageError):
        restore(v2, SNAP1, str(out), include=["a"], exclude=["b"])


def test_subpath(v2: Repository, out: Path) -> None:
    result = restore(v2, f"{SNAP1}:deep/a", str(out))
    assert result.errors == [] and result.subpath == "deep/a"
    want = {p[len(b"deep/a/") :]: e for p, e in DATASET1.items() if p.startswith(b"deep/a/")}
    assert compare_with_dataset(out, want) == []
    with pytest.raises(PathNotFoundError, match="not found"):
        restore(v2, f"{SNAP1}:deep/nope", str(out / "x"))
    with pytest.raises(PathNotFoundError, match="not a directory"):
        restore(v2, f"{SNAP1}:README.txt", str(out / "y"))


def test_latest_with_filters(v2: Repository, out: Path) -> None:
    result = restore(v2, "latest", str(out), tags=["second"], include=["/added-*"])
    assert result.snapshot_id.startswith("8ee9dcc7")
    assert set(scan(out)) == {b"added-in-snapshot-2.txt"}


def test_sparse_zero_file_uses_no_blocks(v2: Repository, out: Path) -> None:
    sparse, dense = out / "s", out / "d"
    inc = ["/binary/zeros-2MiB.bin"]
    assert restore(v2, SNAP1, str(sparse), include=inc).errors == []
    assert restore(v2, SNAP1, str(dense), include=inc, sparse=False).errors == []
    s = (sparse / "binary/zeros-2MiB.bin").stat()
    d = (dense / "binary/zeros-2MiB.bin").stat()
    assert s.st_size == d.st_size == 2 * 1024 * 1024
    if d.st_blocks * 512 < d.st_size:
        pytest.skip("this file system compresses or dedups zeros by itself")
    assert s.st_blocks * 512 <= 64 * 1024
    assert (sparse / "binary/zeros-2MiB.bin").read_bytes() == bytes(2 * 1024 * 1024)


def test_write_blob_skips_aligned_zero_runs(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(1000) + bytes(4 * SPARSE_SEGMENT) + os.urandom(777)
    size = 3 + len(data)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        write_blob(fd, data, 3, sparse=True)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(3) + data
    assert path.stat().st_blocks * 512 < 3 * SPARSE_SEGMENT
    assert ZERO_CHUNK_ID.hex().startswith("07854d2fef297a06")


def test_verify_detects_modified_file(v2: Repository, out: Path) -> None:
    result = restore(v2, SNAP1, str(out), include=["/binary", "/README.txt"], verify=True)
    assert result.errors == [] and result.verified_files == 6
    assert verify_restored(v2, SNAP1, str(out), include=["/binary", "/README.txt"]).ok
    victim = out / "binary/periodic-9MiB.bin"
    with open(victim, "r+b") as f:
        f.seek(9_000_000)
        f.write(b"X")
    (out / "README.txt").write_bytes(b"short")
    again = verify_restored(v2, SNAP1, str(out), include=["/binary", "/README.txt"])
    assert len(again.errors) == 2
    assert any("periodic-9MiB.bin" in e and "offset 8388608" in e for e in again.errors)
    assert any("README.txt" in e for e in again.errors)


def test_damaged_pack_fails_only_affected_files(fixture_repo: Any, tmp_path: Path) -> None:
    path = fixture_repo("v2")
    # blob 72ca8c96 (README.txt) is the first blob of the big data pack (EXPECTED.md)
    pack = path / "data/b5/b54968f6a4ee1a28abf408c34f19404cfd30ad3bb22c07bac13444ad999c3e60"
    flip_byte(pack, 50)
    repo = open_repo(path)
    target = tmp_path / "out"
    try:
        result = restore(repo, SNAP1, str(target))
    finally:
        repo.close()
    assert result.failed_files == [b"README.txt"]
    assert len(result.errors) == 1 and "README.txt" in result.errors[0]
    with pytest.raises(RestoreError, match="README.txt"):
        result.raise_for_errors()
    rest = {p: e for p, e in DATASET1.items() if p != b"README.txt"}
    problems = compare_with_dataset(target, rest)
    # README.txt's only blob is damaged, so it is never created (no file of the right
    # size full of holes that looks restored); every other entry is exact
    assert problems == []
    assert not (target / "README.txt").exists()


def test_unwritable_target_is_one_clear_error(v2: Repository, out: Path) -> None:
    out.mkdir()
    blocker = out / "file"
    blocker.write_bytes(b"")
    with pytest.raises(RestoreError, match="cannot create restore target"):
        restore(v2, SNAP1, str(blocker / "sub"))
    if os.geteuid() == 0:
        target = "/proc/cairn-restore-test"  # root may write anywhere except such places
    else:
        ro = out / "ro"
        ro.mkdir(mode=0o555)
        target = str(ro)
    with pytest.raises(RestoreError):
        restore(v2, SNAP1, target)


def test_missing_pack_fails_the_files_that_need_it(fixture_repo: Any, out: Path) -> None:
    path = fixture_repo("v2")
    # this pack holds the two data blobs new in snapshot 2 (EXPECTED.md)
    pack = path / "data/78/78eb6953fd042b8a488396bb9e70070042a92fd3ea9138304bfe533e6c09b815"
    pack.chmod(0o600)
    pack.unlink()
    repo = open_repo(path)
    try:
        result = restore(repo, "8ee9dcc7", str(out))
    finally:
        repo.close()
    assert sorted(result.failed_files) == [
        b"added-in-snapshot-2.txt",
        b"big/pseudo-random-text-20MiB.txt",
    ]
    assert all("78eb6953" in e or "not found" in e.lower() for e in result.errors), result.errors
    assert (
        result.files
        == len([e for e in expected_dataset("2", False).values() if e["type"] == "file"]) - 2
    )
