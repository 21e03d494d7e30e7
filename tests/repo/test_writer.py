"""Writer side: repositories cairn writes pass `restic check --read-data` (spec §19 check 8)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from cairn.backend.base import FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.errors import BackendError, CairnError
from cairn.repo import packer as packer_mod
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.repository import Repository
from tests.conftest import FIXTURE_PASSWORD, run_restic
from tests.repo.repo_util import KDF, PASSWORD, new_repo, random_chunks, save_file_snapshot


def restic_check(path: Path) -> None:
    proc = run_restic(path, "check", "--read-data", password=PASSWORD)
    assert b"no errors were found" in proc.stdout, proc.stdout


def header_kinds(repo: Repository) -> set[tuple[str, bool]]:
    """(type, compressed?) of every blob according to the pack headers."""
    out = set()
    for fi in repo.backend.list(FileType.PACK):
        for b in repo.list_pack_blobs(bytes.fromhex(fi.name), fi.size):
            out.add((b.type.label, b.uncompressed_length > 0))
    return out


def mixed_content() -> dict[bytes, list[bytes]]:
    text = b"the quick brown fox jumps over the lazy dog\n" * 5000
    small = [os.urandom(50 + i) for i in range(300)]
    return {
        b"big.bin": [os.urandom(2 * 1024 * 1024), os.urandom(1024 * 1024 + 7)],
        b"text.txt": [text, text[:1000]],  # the second copy of text dedups within the file
        b"dup.txt": [text],  # duplicate of an earlier blob
        b"small.bin": small,
        b"empty": [],
    }


@pytest.mark.parametrize(
    ("version", "compression", "expected_kinds"),
    [
        (2, "auto", {("data", True), ("tree", True)}),
        (2, "max", {("data", True), ("tree", True)}),
        (2, "off", {("data", False), ("tree", True)}),
        (1, "auto", {("data", False), ("tree", False)}),
    ],
)
def test_restic_checks_cairn_repo(
    tmp_path: Path, version: int, compression: str, expected_kinds: set[tuple[str, bool]]
) -> None:
    path = tmp_path / "repo"
    repo = new_repo(path, version=version)
    repo.compression = compression
    sid, tree = save_file_snapshot(repo, mixed_content())
    assert header_kinds(repo) == expected_kinds
    repo.close()
    restic_check(path)
    out = run_restic(path, "cat", "blob", tree.hex(), password=PASSWORD).stdout
    assert blob_id(out) == tree
    ls = run_restic(path, "ls", sid, password=PASSWORD).stdout.decode()
    assert "/small.bin" in ls and "/empty" in ls


def test_small_packs_many_blobs_and_split_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packer_mod, "INDEX_FILE_BLOBS", 100)
    path = tmp_path / "repo"
    repo = new_repo(path)
    repo.pack_size = 4096
    chunks = random_chunks(600, 37)
    sid, _ = save_file_snapshot(repo, {b"many": chunks, b"again": chunks[:50]})
    packs = list(repo.backend.list(FileType.PACK))
    indexes = list(repo.backend.list(FileType.INDEX))
    assert len(packs) > 5 and len(indexes) >= 6
    repo.close()
    restic_check(path)
    # Read back through a fresh open: every blob via the index.
    again = Repository.open(LocalBackend(path), PASSWORD)
    again.load_index()
    assert len(again.index) == 601
    assert again.load_blob(BlobType.DATA, blob_id(chunks[123])) == chunks[123]
    blob = chunks[7]
    out = run_restic(path, "cat", "blob", blob_id(blob).hex(), password=PASSWORD).stdout
    assert out == blob


def test_hundreds_of_small_blobs_in_one_pack(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = new_repo(path)
    save_file_snapshot(repo, {b"f": random_chunks(800, 10)})
    packs = list(repo.backend.list(FileType.PACK))
    assert len(packs) == 2  # one data pack, one tree pack
    repo.close()
    restic_check(path)


def test_concurrent_writers_dedup(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = new_repo(path)
    repo.pack_size = 64 * 1024
    chunks = random_chunks(200, 3000)
    results: list[tuple[bytes, bool, int]] = []
    lock = threading.Lock()

    def work(seed: int) -> None:
        for i in range(len(chunks)):
            r = repo.save_blob(BlobType.DATA, chunks[(i * 7 + seed) % len(chunks)])
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    new = [r for r in results if r[1]]
    assert len(new) == len(chunks)  # every blob stored exactly once
    assert all(r[2] > 3000 for r in new)  # random data: compressed size + 32 > input
    assert all(r[2] == 0 for r in results if not r[1])
    save_file_snapshot(repo, {b"f": chunks})
    assert len(repo.index) == len(chunks) + 1
    repo.close()
    restic_check(path)


class FailingBackend(LocalBackend):
    """Refuses to store packs (a full disk, say)."""

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        if handle.type is FileType.PACK:
            raise BackendError("disk full")
        super().save(handle, data)

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        if handle.type is FileType.PACK:  # how the packer stores packs
            raise BackendError("disk full")
        super().save_file(handle, file, size)


def test_upload_error_reaches_caller_and_no_index_is_written(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    new_repo(path).close()
    repo = Repository.open(FailingBackend(path), PASSWORD)
    repo.pack_size = 1024
    with pytest.raises(CairnError, match="disk full"):
        for c in random_chunks(50, 2000):
            repo.save_blob(BlobType.DATA, c)
        repo.flush()
    with pytest.raises(CairnError, match="disk full"):
        repo.flush()
    repo.close()
    assert not list(LocalBackend(path).list(FileType.INDEX))


def test_flush_writes_index_after_packs(tmp_path: Path) -> None:
    """Every index file names only packs that exist, at every flush."""
    path = tmp_path / "repo"
    repo = new_repo(path)
    repo.pack_size = 2048
    for round_ in range(3):
        for c in random_chunks(20, 500):
            repo.save_blob(BlobType.DATA, c)
        repo.flush()
        assert repo._saver is not None and repo._saver.pending_count == 0
        packs = {fi.name for fi in repo.backend.list(FileType.PACK)}
        fresh = Repository.open(LocalBackend(path), PASSWORD)
        fresh.load_index()
        assert {p.hex() for p in fresh.index.pack_ids()} == packs
        assert len(fresh.index) == 20 * (round_ + 1)
    repo.close()


def test_compression_setting_validated(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "r"), "pw", kdf=KDF)
    with pytest.raises(CairnError):
        repo.compression = "bogus"


@pytest.mark.parametrize("name", ["v2", "v1", "v1-upgraded"])
def test_cairn_adds_to_restic_repo(fixture_repo: Callable[[str], Path], name: str) -> None:
    """Mixed writers (§19 check 11): a restic-written repository gains a cairn snapshot."""
    path = fixture_repo(name)
    repo = Repository.open(LocalBackend(path), FIXTURE_PASSWORD)
    repo.load_index()
    known = next(b for b in repo.index if b.type is BlobType.DATA)
    existing = repo.load_blob(BlobType.DATA, known.id)
    assert repo.save_blob(BlobType.DATA, existing) == (known.id, False, 0)
    sid, _ = save_file_snapshot(repo, {b"old": [existing], b"new": random_chunks(3, 5000)})
    repo.close()
    proc = run_restic(path, "check", "--read-data", password=FIXTURE_PASSWORD)
    assert b"no errors were found" in proc.stdout
    out = run_restic(path, "ls", sid, password=FIXTURE_PASSWORD).stdout.decode()
    assert "/new" in out and "/old" in out
