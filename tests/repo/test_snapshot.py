"""Snapshot JSON (restic's order and omitempty rules) and snapshot selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cairn.errors import SnapshotNotFoundError
from cairn.repo.node import GoTime
from cairn.repo.snapshot import Snapshot, latest, resolve_prefix
from tests.conftest import run_restic
from tests.repo.repo_util import PASSWORD, new_repo, random_chunks, save_file_snapshot

TREE = bytes(range(32))


def test_field_order_and_omitempty() -> None:
    snap = Snapshot(time=GoTime(1641031200, 500_000_000, 3600), tree=TREE, paths=["/a"])
    assert snap.encode() == (
        b'{"time":"2022-01-01T11:00:00.5+01:00","tree":"'
        + TREE.hex().encode()
        + b'","paths":["/a"]}'
    )
    full = Snapshot(
        time=GoTime(0),
        tree=TREE,
        paths=["/a", "/b"],
        hostname="h",
        username="u",
        uid=1000,
        gid=100,
        excludes=["*.tmp"],
        tags=["x<y"],
        parent="aa" * 32,
        original="bb" * 32,
        program_version="cairn 0.1.0",
        summary={"backup_start": "2022-01-01T10:00:00Z", "files_new": 3},
    )
    doc = json.loads(full.encode())
    assert list(doc) == [
        "time",
        "parent",
        "tree",
        "paths",
        "hostname",
        "username",
        "uid",
        "gid",
        "excludes",
        "tags",
        "original",
        "program_version",
        "summary",
    ]
    assert b'"tags":["x\\u003cy"]' in full.encode()  # Go's HTML-safe escaping
    assert Snapshot.decode(full.encode()) == full


def test_unknown_fields_survive_a_rewrite() -> None:
    raw = (
        b'{"time":"2022-01-01T10:00:00Z","tree":"'
        + TREE.hex().encode()
        + b'","paths":["/a"],"future_field":{"k":[1,2]}}'
    )
    snap = Snapshot.decode(raw)
    assert snap.extra == {"future_field": {"k": [1, 2]}}
    snap.tags = ["new"]
    again = json.loads(snap.encode())
    assert again["future_field"] == {"k": [1, 2]} and again["tags"] == ["new"]


def test_latest_and_filters() -> None:
    def s(t: int, host: str, paths: list[str], tags: list[str]) -> Snapshot:
        return Snapshot(time=GoTime(t), tree=TREE, paths=paths, hostname=host, tags=tags)

    snaps = [
        ("a1", s(100, "h1", ["/x"], ["daily"])),
        ("b2", s(300, "h2", ["/x", "/y"], ["daily", "big"])),
        ("c3", s(200, "h1", ["/y"], [])),
    ]
    assert latest(snaps)[0] == "b2"
    assert latest(snaps, hosts=["h1"])[0] == "c3"
    assert latest(snaps, paths=["/x"])[0] == "b2"
    assert latest(snaps, hosts=["h1"], paths=["/x"])[0] == "a1"
    assert latest(snaps, tags=["daily,big"])[0] == "b2"
    assert latest(snaps, tags=["nope", "daily"], hosts=["h1"])[0] == "a1"
    with pytest.raises(SnapshotNotFoundError):
        latest(snaps, tags=["daily,nope"])


def test_prefix_resolution() -> None:
    names = ["abc1" + "0" * 60, "abd2" + "0" * 60]
    assert resolve_prefix("abc", names) == names[0]
    with pytest.raises(SnapshotNotFoundError, match="ambiguous"):
        resolve_prefix("ab", names)
    with pytest.raises(SnapshotNotFoundError):
        resolve_prefix("ff", names)


def test_restic_reads_cairn_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    sid, tree = save_file_snapshot(repo, {b"f": random_chunks(2, 100)})
    snap = repo.load_snapshot(sid)
    snap.tags = ["tag&more", "ünï"]
    snap.original = sid
    new_id = repo.save_snapshot(snap)
    out = json.loads(run_restic(path, "snapshots", "--json", password=PASSWORD).stdout)
    by_id = {s["id"]: s for s in out}
    assert by_id[new_id]["tags"] == ["tag&more", "ünï"]
    assert by_id[new_id]["original"] == sid
    assert by_id[new_id]["tree"] == tree.hex()
    assert by_id[sid]["hostname"] == "test-host"
