"""Helpers shared by the repository-layer tests: fresh repositories with cheap keys, and
a minimal tree/snapshot so that restic has something to check."""

from __future__ import annotations

import os
from pathlib import Path

from cairn.backend.local import LocalBackend
from cairn.repo.ids import BlobType
from cairn.repo.keys import KdfParams
from cairn.repo.node import GoTime, Node
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from tests.conftest import FIXTURE_PASSWORD, TEST_KDF

KDF = KdfParams(*TEST_KDF)
PASSWORD = "pw"
T0 = GoTime(1_700_000_000, 123_456_789, 0)


def new_repo(path: Path, version: int = 2, **kw: object) -> Repository:
    """A cairn-initialised repository at ``path`` with password "pw" and cheap scrypt."""
    return Repository.init(LocalBackend(path), PASSWORD, version=version, kdf=KDF, **kw)  # type: ignore[arg-type]


def open_repo(path: Path, password: str = FIXTURE_PASSWORD) -> Repository:
    return Repository.open(LocalBackend(path), password)


def file_node(name: bytes, content: list[bytes], size: int) -> Node:
    return Node(
        name=name, type="file", mode=0o644, mtime=T0, atime=T0, ctime=T0, size=size, content=content
    )


def save_file_snapshot(repo: Repository, files: dict[bytes, list[bytes]]) -> tuple[str, bytes]:
    """Store the given files (name -> chunks) as data blobs, one tree, one snapshot."""
    nodes = []
    for name, chunks in sorted(files.items()):
        ids = [repo.save_blob(BlobType.DATA, c)[0] for c in chunks]
        nodes.append(file_node(name, ids, sum(len(c) for c in chunks)))
    tree = repo.save_tree(nodes)
    snap = Snapshot(time=T0, tree=tree, paths=["/data"], hostname="test-host", username="tester")
    return repo.save_snapshot(snap), tree


def random_chunks(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]
