"""``check``: the fixtures pass; damage is found, named, and traced to its snapshots; the
real restic agrees (spec §19 checks 2 and 16)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import cairn.ops.check as check_module
from cairn.errors import CheckFailedError, UsageError
from cairn.ops.check import (
    CheckProgress,
    check,
    costliest_first,
    predicted_pack_size,
    select_packs,
)
from tests.conftest import FIXTURE_PASSWORD, run_restic, spy_on_pools
from tests.restorer.helpers import flip_byte, open_repo

BIG_PACK = "b54968f6a4ee1a28abf408c34f19404cfd30ad3bb22c07bac13444ad999c3e60"
STDIN_TREE_PACK = "c721807eccead053635fc2f5033fc45e5ec96e7cd06fa01c5902da4388fbc75f"
SNAP1, SNAP2, SNAP3 = (
    "495607a5a81fd4d264e65650e81ba1b2e9fc57a8061f277801f25189f9a46dbd",
    "8ee9dcc7cb30b04800771a80b8e49e52f38feca21f32370a9cfeeb4f1574a795",
    "8a3da37d59fbcc6dfc55f2357d747fd048ff49debfa19f69d67e4add98d53d22",
)


def _pack_path(repo: Path, name: str) -> Path:
    return repo / "data" / name[:2] / name


@pytest.fixture(params=["threads", "processes"])
def readers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Runs a test with the packs read by threads and again by forked worker processes
    (the fixtures hold fewer packs than the count at which check forks). Returns the
    worker counts of the process pools the test started."""
    forked = request.param == "processes"
    monkeypatch.setattr("cairn.ops.check._FORK_MIN_PACKS", 1 if forked else 10**9)
    pools = spy_on_pools(monkeypatch, check_module)
    if forked:
        pools.append(0)  # marks the mode; a started pool adds its size after it
    return pools


@pytest.mark.parametrize("name", ["v2", "v1", "v1-upgraded"])
@pytest.mark.parametrize("read_data", [False, True])
def test_fixtures_pass(fixture_repo: Any, name: str, read_data: bool, readers: str) -> None:
    path = fixture_repo(name)
    repo = open_repo(path)
    seen: list[CheckProgress] = []
    try:
        result = check(repo, read_data=read_data, progress=seen.append)
    finally:
        repo.close()
    assert result.ok, [str(e) for e in result.errors]
    result.raise_for_errors()
    n_packs = sum(1 for p in (path / "data").rglob("*") if p.is_file())
    assert result.packs == n_packs and result.orphaned_packs == []
    assert result.snapshots == len(list((path / "snapshots").iterdir()))
    assert result.trees > 0
    assert result.packs_read == (n_packs if read_data else 0)
    # forked readers are used exactly when asked for, and only to read data
    cores = check_module.cores()
    assert readers == ([0, cores] if readers and read_data and cores > 1 else readers[:1])
    assert {p.phase for p in seen} >= {"snapshots", "index", "packs", "trees"}
    assert not list((path / "locks").iterdir())  # the exclusive lock is gone again


def test_flipped_byte_found_only_by_read_data(fixture_repo: Any, readers: str) -> None:
    path = fixture_repo("v2")
    # offset 50 lies in blob 72ca8c96 (README.txt, in snapshots 1 and 2)
    flip_byte(_pack_path(path, BIG_PACK), 50)
    repo = open_repo(path)
    try:
        assert check(repo).ok  # structure is intact: same size, index consistent
        result = check(repo, read_data=True)
    finally:
        repo.close()
    kinds = sorted(e.kind for e in result.errors)
    assert kinds == ["blob-damaged", "pack-damaged"]  # the blob, and the pack's hash
    for e in result.errors:
        assert e.pack == BIG_PACK
        assert e.snapshots == sorted([SNAP1, SNAP2])
        assert "b54968f6a4ee1a28" in str(e) and "495607a5" in str(e)
    blob = next(e for e in result.errors if e.kind == "blob-damaged")
    assert blob.blob is not None and blob.blob.startswith("72ca8c96e7bb40be")
    assert result.damaged_snapshots == sorted([SNAP1, SNAP2])
    with pytest.raises(CheckFailedError):
        result.raise_for_errors()
    # the real restic agrees that the repository is damaged
    proc = run_restic(path, "check", "--read-data", password=FIXTURE_PASSWORD, check=False)
    assert proc.returncode != 0


def test_damaged_pack_header(fixture_repo: Any, readers: str) -> None:
    path = fixture_repo("v2")
    pack = _pack_path(path, STDIN_TREE_PACK)
    flip_byte(pack, pack.stat().st_size - 10)  # inside the sealed header
    repo = open_repo(path)
    try:
        result = check(repo, read_data=True)
    finally:
        repo.close()
    header = [e for e in result.errors if "header is damaged" in e.message]
    assert len(header) == 1 and header[0].pack == STDIN_TREE_PACK
    assert header[0].snapshots == [SNAP3]


def test_deleted_pack_is_a_structure_error(fixture_repo: Any) -> None:
    path = fixture_repo("v2")
    _pack_path(path, STDIN_TREE_PACK).unlink()
    repo = open_repo(path)
    try:
        result = check(repo)
    finally:
        repo.close()
    missing = [e for e in result.errors if e.kind == "pack-missing"]
    assert len(missing) == 1 and missing[0].pack == STDIN_TREE_PACK
    assert missing[0].snapshots == [SNAP3]
    # the stdin snapshot's root tree lived there and cannot be loaded any more
    assert any(e.kind == "tree-damaged" and e.snapshots == [SNAP3] for e in result.errors)


def test_orphaned_pack_is_not_an_error(fixture_repo: Any) -> None:
    path = fixture_repo("v2")
    index_files = list((path / "index").iterdir())
    small = next(p for p in index_files if p.name.startswith("f5c670e3"))
    small.chmod(0o600)
    small.unlink()  # its two packs are now in no index
    repo = open_repo(path)
    try:
        result = check(repo)
    finally:
        repo.close()
    assert len(result.orphaned_packs) == 2
    # ... but the stdin snapshot's tree and data are gone from the index: errors
    assert result.errors and all(e.snapshots == [SNAP3] for e in result.errors)


def test_read_data_subset_buckets(fixture_repo: Any) -> None:
    path = fixture_repo("v2")
    repo = open_repo(path)
    try:
        reads = [check(repo, read_data_subset=f"{n}/3").packs_read for n in (1, 2, 3)]
        half = check(repo, read_data_subset="50%").packs_read
    finally:
        repo.close()
    assert sum(reads) == 6 and reads == [3, 2, 1]  # first ID byte % 3 == n-1
    assert half == 3


def test_select_packs_rules() -> None:
    packs = {bytes([i]) + bytes(31): 1000 for i in range(30)}
    third = select_packs(packs, "1/3")
    assert len(third) == 10 and all(p[0] % 3 == 0 for p in third)
    assert len(select_packs(packs, "10%", random.Random(1))) == 3
    assert len(select_packs(packs, "0.1%")) == 1  # at least one pack
    assert sum(packs[p] for p in select_packs(packs, "5k")) <= 5 * 1024
    for bad in ("0/3", "4/3", "abc", "0%", "150%"):
        with pytest.raises(UsageError):
            select_packs(packs, bad)


def test_predicted_pack_size_matches_fixture_pack(fixture_repo: Any) -> None:
    path = fixture_repo("v2")
    repo = open_repo(path)
    try:
        repo.load_index()
        by_pack = repo.index.records_by_pack()
    finally:
        repo.close()
    assert by_pack
    for pack_id, records in by_pack.items():
        want = predicted_pack_size(repo.index, records)
        assert want == _pack_path(path, pack_id.hex()).stat().st_size


def test_packs_are_read_costliest_first(fixture_repo: Any) -> None:
    """Bytes first, then blobs, a tree (decoded too) costing more than a data blob: a
    pack of trees goes before a data pack of the same size."""
    repo = open_repo(fixture_repo("v2"))
    try:
        repo.load_index()
        by_pack = repo.index.records_by_pack()
        ids = sorted(by_pack)
        same = {p: 1000 for p in ids}
        order = costliest_first(ids, by_pack, same, repo.index)
        trees = {p for p in ids if repo.index.entries_at(by_pack[p])[0][0] == 1}
        assert sorted(order) == ids and trees and trees != set(ids)
        # equal sizes: every tree pack of at least as many blobs precedes each data pack
        for t in trees:
            for d in set(ids) - trees:
                if len(by_pack[t]) >= len(by_pack[d]):
                    assert order.index(t) < order.index(d)
        sizes = {p: (10**9 if p == ids[-1] else 1000) for p in ids}
        assert costliest_first(ids, by_pack, sizes, repo.index)[0] == ids[-1]
    finally:
        repo.close()


def test_truncated_pack_is_reported_not_raised(fixture_repo: Any, readers: list[int]) -> None:
    """A pack cut to 2 bytes: the streaming reader reports it as damaged (no exception)."""
    path = fixture_repo("v2")
    pack = _pack_path(path, STDIN_TREE_PACK)
    pack.write_bytes(pack.read_bytes()[:2])
    repo = open_repo(path)
    try:
        result = check(repo, read_data=True)
    finally:
        repo.close()
    damaged = [e for e in result.errors if e.kind == "pack-damaged"]
    assert any("too small for a pack" in e.message for e in damaged)
    assert all(e.pack == STDIN_TREE_PACK for e in damaged)
    assert any(e.kind == "pack-size" for e in result.errors)
