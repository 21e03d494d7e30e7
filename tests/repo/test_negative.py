"""Damage and refusal: flipped bytes, unsupported configs, missing repositories (§19 check 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.backend.base import FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.errors import (
    FormatError,
    IntegrityError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SnapshotNotFoundError,
    UnsupportedRepositoryError,
)
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.repository import Repository
from tests.conftest import run_restic
from tests.repo.repo_util import KDF, PASSWORD, new_repo, random_chunks, save_file_snapshot


def flip(path: Path, offset: int) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def only(path: Path, sub: str) -> Path:
    files = [p for p in (path / sub).rglob("*") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path = tmp_path / "r"
    repo = new_repo(path)
    chunks = random_chunks(5, 1000)
    save_file_snapshot(repo, {b"f": chunks})
    repo.close()
    return path, chunks


def reopen(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD)


def data_pack(path: Path) -> Path:
    repo = reopen(path)
    repo.load_index()
    for b in repo.index:
        if b.type is BlobType.DATA:
            return path / Handle(FileType.PACK, b.pack_id.hex()).relpath()
    raise AssertionError("no data pack")


def test_flipped_byte_in_blob(filled: tuple[Path, list[bytes]]) -> None:
    path, chunks = filled
    pack = data_pack(path)
    flip(pack, 100)  # inside the first blob
    repo = reopen(path)
    repo.load_index()
    first = repo.index.lookup_all(BlobType.DATA, blob_id(chunks[0]))[0]
    bad = next(b for b in repo.index if b.pack_id == first.pack_id and b.offset == 0)
    with pytest.raises(IntegrityError, match="damaged"):
        repo.load_blob(BlobType.DATA, bad.id)
    results = dict(
        (b.id, r) for b, r in repo.read_pack_blobs(bad.pack_id, repo.index.by_pack()[bad.pack_id])
    )
    assert isinstance(results[bad.id], IntegrityError)
    assert sum(isinstance(r, bytes) for r in results.values()) == len(results) - 1
    # restic agrees that the pack is damaged.
    proc = run_restic(path, "check", "--read-data", password=PASSWORD, check=False)
    assert proc.returncode != 0


def test_flipped_byte_in_pack_header(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    pack = data_pack(path)
    flip(pack, pack.stat().st_size - 10)
    with pytest.raises(IntegrityError):
        reopen(path).list_pack_blobs(bytes.fromhex(pack.name))


def test_header_length_beyond_file(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    pack = data_pack(path)
    flip(pack, pack.stat().st_size - 2)  # LE32 length: now ~64 KiB larger than the file
    with pytest.raises(FormatError, match="invalid header length"):
        reopen(path).list_pack_blobs(bytes.fromhex(pack.name))


def test_flipped_byte_in_index(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    flip(only(path, "index"), 40)
    with pytest.raises(IntegrityError, match="index"):
        reopen(path).load_index()


def test_flipped_byte_in_snapshot(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    snap = only(path, "snapshots")
    flip(snap, 20)
    repo = reopen(path)
    with pytest.raises(IntegrityError, match="snapshots/"):
        repo.load_snapshot(snap.name)
    with pytest.raises(IntegrityError):
        repo.find_snapshot("latest")


def test_flipped_byte_in_key(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    flip(only(path, "keys"), 30)
    with pytest.raises(IntegrityError, match="key file"):
        reopen(path)


def test_damaged_key_skipped_when_another_opens(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    key = only(path, "keys")
    reopen(path).add_key(PASSWORD, KDF)
    flip(key, 30)
    assert reopen(path).key_name != key.name


def test_config_version_3(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    repo = reopen(path)
    text = repo.config.encode().replace(b'"version":2', b'"version":3')
    repo.backend.save(Handle(FileType.CONFIG), repo.key.seal(text))
    with pytest.raises(UnsupportedRepositoryError, match="version 3"):
        reopen(path)


def test_reducible_polynomial(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    repo = reopen(path)
    text = (
        repo.config.encode().split(b'"chunker_polynomial"')[0]
        + b'"chunker_polynomial":"20000000000001"}'
    )
    repo.backend.save(Handle(FileType.CONFIG), repo.key.seal(text))
    with pytest.raises(UnsupportedRepositoryError, match="polynomial"):
        reopen(path)
    proc = run_restic(path, "snapshots", password=PASSWORD, check=False)
    assert proc.returncode != 0


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(LocalBackend(tmp_path / "nothing"), PASSWORD)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryNotFoundError, match="cairn init"):
        Repository.open(LocalBackend(tmp_path / "empty"), PASSWORD)


def test_init_refuses_existing(tmp_path: Path) -> None:
    new_repo(tmp_path / "r")
    with pytest.raises(RepositoryExistsError):
        new_repo(tmp_path / "r")
    with pytest.raises(UnsupportedRepositoryError):
        new_repo(tmp_path / "other", version=3)


def test_other_copy_used_when_one_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "r"
    new_repo(path).close()
    data = os.urandom(5000)
    # Two writers that do not see each other's index store the same blob twice.
    for _ in range(2):
        writer = reopen(path)
        writer.save_blob(BlobType.DATA, data)
        writer.flush()
        writer.close()
    repo = reopen(path)
    repo.load_index()
    copies = repo.index.lookup_all(BlobType.DATA, blob_id(data))
    assert len(copies) == 2
    flip(path / Handle(FileType.PACK, copies[0].pack_id.hex()).relpath(), 50)
    assert repo.load_blob(BlobType.DATA, blob_id(data)) == data


def test_snapshot_prefixes(filled: tuple[Path, list[bytes]]) -> None:
    path, _ = filled
    repo = reopen(path)
    sid = repo.list_snapshots()[0]
    assert repo.find_snapshot(sid[:6])[0] == sid
    with pytest.raises(SnapshotNotFoundError):
        repo.find_snapshot("ffffffffff" if not sid.startswith("ff") else "0000000000")
    with pytest.raises(SnapshotNotFoundError, match="host nowhere"):
        repo.find_snapshot("latest", hosts=["nowhere"])
    assert repo.find_snapshot("latest", hosts=["test-host"], paths=["/data"])[0] == sid
