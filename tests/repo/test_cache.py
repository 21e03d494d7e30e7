"""The local metadata cache: layout, verification, eviction, and what it saves in reads."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.backend.base import Backend, FileInfo, FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.repo import repository as repository_module
from cairn.repo.cache import CACHEDIR_TAG, Cache, CacheUnavailable, default_root
from cairn.repo.ids import BlobType
from cairn.repo.repository import Repository
from tests.repo.repo_util import (
    PASSWORD,
    file_node,
    new_repo,
    random_chunks,
    save_file_snapshot,
)


class CountingBackend(Backend):
    """Delegates to another backend and counts what is read, by file type."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location
        self.connections = inner.connections
        self.bytes_read: Counter[FileType] = Counter()
        self.whole_loads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def create(self) -> None:
        self.inner.create()

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        self.inner.save(handle, data)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(handle, offset, length)
        with self._lock:
            self.bytes_read[handle.type] += len(data)
            if not offset and length is None:
                self.whole_loads[handle.name] += 1
        return data

    def stat(self, handle: Handle) -> int:
        return self.inner.stat(handle)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        return self.inner.list(file_type)

    def remove(self, handle: Handle) -> None:
        self.inner.remove(handle)


def _populated(path: Path) -> tuple[str, bytes]:
    """A repository with one snapshot: a tree pack, a data pack, an index file."""
    with new_repo(path) as repo:
        return save_file_snapshot(repo, {b"a.bin": random_chunks(3, 20_000), b"b": [b"bee"]})


def _open(path: Path, cache_root: Path | None) -> tuple[Repository, CountingBackend]:
    counting = CountingBackend(LocalBackend(path))
    repo = Repository.open(counting, PASSWORD)
    if cache_root is not None:
        repo.use_cache(Cache.open(cache_root, repo.config.id))
    return repo, counting


def _read_everything(repo: Repository, tree: bytes) -> None:
    repo.load_index()
    repo.load_snapshots()
    assert {n.name for n in repo.load_tree(tree)} == {b"a.bin", b"b"}


def test_layout_is_restics_with_a_cachedir_tag(tmp_path: Path) -> None:
    repo_id = "ab" * 32
    cache = Cache.open(tmp_path / "c", repo_id)
    assert (tmp_path / "c" / "CACHEDIR.TAG").read_bytes() == CACHEDIR_TAG
    assert (tmp_path / "c" / repo_id / "version").read_text() == "1\n"
    for d in ("snapshots", "index", "data"):
        assert (tmp_path / "c" / repo_id / d).is_dir()
    assert cache.file(Handle(FileType.PACK, "cd" * 32)) == (
        tmp_path / "c" / repo_id / "data" / "cd" / ("cd" * 32)
    )
    # Names that are not IDs never map to a path (no escaping the cache directory).
    assert cache.file(Handle(FileType.SNAPSHOT, "../" * 21 + "x")) is None
    assert cache.file(Handle(FileType.LOCK, "ab" * 32)) is None
    with pytest.raises(CacheUnavailable):
        Cache.open(tmp_path / "c", "../escape")
    (tmp_path / "c" / repo_id / "version").write_text("2\n")
    with pytest.raises(CacheUnavailable, match="newer layout"):
        Cache.open(tmp_path / "c", repo_id)
    (tmp_path / "blocked").write_text("a file, not a directory")
    with pytest.raises(CacheUnavailable):
        Cache.open(tmp_path / "blocked", repo_id)


def test_default_root_follows_xdg() -> None:
    assert default_root({"XDG_CACHE_HOME": "/x/cache", "HOME": "/h"}) == Path("/x/cache/cairn")
    assert default_root({"XDG_CACHE_HOME": "relative", "HOME": "/h"}) == Path("/h/.cache/cairn")
    assert default_root({"HOME": "/h"}) == Path("/h/.cache/cairn")


def test_entries_are_verified_against_their_names(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path, "00" * 32)
    data = b"some sealed bytes"
    good = Handle(FileType.INDEX, hashlib.sha256(data).hexdigest())
    assert not cache.put(Handle(FileType.INDEX, "11" * 32), data)  # wrong name: refused
    assert cache.put(good, data) and cache.get(good) == data
    path = cache.file(good)
    assert path is not None
    path.write_bytes(b"bit rot")
    assert cache.get(good) is None and not path.exists()  # a bad entry is deleted
    # A cached pack is hashed whole on first use, then read by range.
    pack = Handle(FileType.PACK, hashlib.sha256(data).hexdigest())
    assert cache.put(pack, data)
    fresh = Cache(cache.path)  # another process: nothing verified yet
    pack_path = fresh.file(pack)
    assert pack_path is not None
    pack_path.write_bytes(data[:-1] + b"X")
    assert fresh.read_range(pack, 0, 4) is None and not pack_path.exists()


def test_the_cache_holds_snapshots_indexes_and_tree_packs_only(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    with new_repo(repo_path) as repo:
        repo.use_cache(Cache.open(tmp_path / "cache", repo.config.id))
        snap_id, _ = save_file_snapshot(repo, {b"a.bin": random_chunks(3, 20_000)})
        cache = repo.cache
        assert cache is not None
        packs = {fi.name for fi in repo.backend.list(FileType.PACK)}
        tree_packs = {
            p
            for p in packs
            if {b.type for b in repo.list_pack_blobs(bytes.fromhex(p))} == {BlobType.TREE}
        }
    assert len(packs) == 2 and len(tree_packs) == 1
    # Written on save: no read was needed to fill it.
    assert cache.names(FileType.PACK) == tree_packs
    assert cache.names(FileType.SNAPSHOT) == {snap_id}
    assert cache.names(FileType.INDEX) == {
        fi.name for fi in LocalBackend(repo_path).list(FileType.INDEX)
    }


def test_reads_come_from_the_cache_and_survive_its_damage(tmp_path: Path) -> None:
    _, tree = _populated(tmp_path / "repo")
    cache_root = tmp_path / "cache"

    repo, counting = _open(tmp_path / "repo", None)
    _read_everything(repo, tree)
    uncached = sum(counting.bytes_read.values())
    repo.close()

    # First run with an empty cache fills it; the second reads nothing but config and key.
    for _ in range(2):
        repo, counting = _open(tmp_path / "repo", cache_root)
        _read_everything(repo, tree)
        repo.close()
    assert set(counting.bytes_read) <= {FileType.CONFIG, FileType.KEY}
    assert uncached > 0

    # Damage every cached file: each is detected, fetched again and repaired.
    cache = Cache.open(cache_root, repo.config.id)
    damaged = [
        p
        for p in cache.path.rglob("*")
        if p.is_file() and len(p.name) == 64 and not p.parent.name.startswith("cairn-")
    ]
    assert len(damaged) == 3  # snapshot, index, tree pack
    (cache.path / "cairn-index" / repo.config.id).unlink()  # its own test below
    for p in damaged:
        p.write_bytes(b"\0" * p.stat().st_size)
    repo, counting = _open(tmp_path / "repo", cache_root)
    _read_everything(repo, tree)
    repo.close()
    assert counting.bytes_read[FileType.PACK] > 0 and counting.bytes_read[FileType.INDEX] > 0
    assert all(cache.get(Handle(_type_of(p), p.name)) is not None for p in damaged)


def _type_of(p: Path) -> FileType:
    return {"snapshots": FileType.SNAPSHOT, "index": FileType.INDEX}.get(
        p.parent.name, FileType.PACK
    )


def test_a_deleted_cache_only_costs_speed(tmp_path: Path) -> None:
    _, tree = _populated(tmp_path / "repo")
    repo, _ = _open(tmp_path / "repo", tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache")  # pulled from under a running process
    _read_everything(repo, tree)
    repo.close()


def test_listing_evicts_what_the_repository_no_longer_has(tmp_path: Path) -> None:
    snap_id, _ = _populated(tmp_path / "repo")
    repo, _ = _open(tmp_path / "repo", tmp_path / "cache")
    repo.load_snapshots()
    cache = repo.cache
    assert cache is not None and cache.names(FileType.SNAPSHOT) == {snap_id}
    LocalBackend(tmp_path / "repo").remove(Handle(FileType.SNAPSHOT, snap_id))  # forget elsewhere
    stray = cache.path / "snapshots" / ".tmp-left-by-kill"
    stray.write_bytes(b"")
    os.utime(stray, (0, 0))
    assert repo.list_snapshots() == []
    assert cache.names(FileType.SNAPSHOT) == set() and not stray.exists()
    repo.close()


def test_concurrent_tree_reads_fetch_a_pack_once(tmp_path: Path) -> None:
    with new_repo(tmp_path / "repo") as repo:
        # Eight trees in one tree pack (one flush).
        trees = [repo.save_tree([file_node(f"f{i}".encode(), [], 0)]) for i in range(8)]
        repo.flush()
    repo, counting = _open(tmp_path / "repo", tmp_path / "cache")
    repo.load_index()
    (pack,) = {b.pack_id for b in repo.index}
    barrier = threading.Barrier(len(trees))

    def read(tree: bytes) -> None:
        barrier.wait()
        repo.load_tree(tree)

    threads = [threading.Thread(target=read, args=(t,)) for t in trees]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert counting.whole_loads[pack.hex()] == 1
    assert counting.bytes_read[FileType.PACK] == LocalBackend(tmp_path / "repo").stat(
        Handle(FileType.PACK, pack.hex())
    )
    repo.close()


def _index_entries(repo: Repository) -> list[tuple[int, bytes, bytes, int, int, int]]:
    return sorted(
        (int(b.type), b.id, b.pack_id, b.offset, b.length, b.uncompressed_length)
        for b in repo.index
    )


def _load_counting_decodes(
    path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[tuple[int, bytes, bytes, int, int, int]], int]:
    """Open with the cache and load the index: (its entries, index files decoded)."""
    decoded = 0
    real = repository_module.iter_index

    def counting(data: bytes) -> object:
        nonlocal decoded
        decoded += 1
        return real(data)

    monkeypatch.setattr(repository_module, "iter_index", counting)
    repo, _ = _open(path, cache_root)
    try:
        repo.load_index()
        return _index_entries(repo), decoded
    finally:
        repo.close()
        monkeypatch.undo()


def test_the_index_comes_back_from_the_caches_sealed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second run decodes no index file; one written since is decoded on top; one
    removed since (prune rewrites them) makes the copy worthless; a damaged or forged
    copy is ignored. The index is the same as from the files in every case."""
    path, cache_root = tmp_path / "repo", tmp_path / "cache"
    _populated(path)
    with Repository.open(LocalBackend(path), PASSWORD) as plain:
        plain.load_index()
        first = _index_entries(plain)
        repo_id = plain.config.id
    state = cache_root / repo_id / "cairn-index" / repo_id

    assert _load_counting_decodes(path, cache_root, monkeypatch) == (first, 1)
    sealed = state.read_bytes()  # written by that first load, and encrypted:
    assert not any(blob_id in sealed or pack_id in sealed for _, blob_id, pack_id, *_ in first)
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (first, 0)

    with Repository.open(LocalBackend(path), PASSWORD) as writer:
        writer.load_index()
        save_file_snapshot(writer, {b"c": random_chunks(2, 5000)})
        writer.load_index()
        both = _index_entries(writer)
    assert len(both) == len(first) + 3  # two data blobs and a tree
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (both, 1)
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (both, 0)

    good = state.read_bytes()
    for bad in (good[:-1] + bytes([good[-1] ^ 1]), b"junk", b""):
        state.write_bytes(bad)
        assert _load_counting_decodes(path, cache_root, monkeypatch) == (both, 2)
        state.write_bytes(bad)  # each of these loads wrote a good copy again

    state.write_bytes(good)
    gone = sorted((path / "index").iterdir())[0]
    gone.chmod(0o600)
    gone.unlink()
    with Repository.open(LocalBackend(path), PASSWORD) as plain:
        plain.load_index()
        left = _index_entries(plain)
    assert len(left) < len(both)
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (left, 1)


def test_a_backup_leaves_the_index_cached_with_its_own_index_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a backup the cache's copy of the index includes what the backup added, so
    the next command decodes no index file at all; it matches the files' index."""
    from cairn.ops.backup import BackupOptions, backup

    path, cache_root = tmp_path / "repo", tmp_path / "cache"
    _populated(path)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))
    repo, _ = _open(path, cache_root)
    repo.pack_size = 4096  # several packs, so index files are written during the backup
    try:
        backup(repo, [str(src)], BackupOptions(host="h"))
    finally:
        repo.close()
    with Repository.open(LocalBackend(path), PASSWORD) as plain:
        plain.load_index()
        expected = _index_entries(plain)
    assert len(expected) > 30
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (expected, 0)


def test_no_cached_index_while_packs_wait_for_their_index_file(tmp_path: Path) -> None:
    path, cache_root = tmp_path / "repo", tmp_path / "cache"
    _populated(path)
    repo, _ = _open(path, cache_root)
    try:
        repo.load_index()
        state = cache_root / repo.config.id / "cairn-index" / repo.config.id
        before = state.read_bytes()
        repo.pack_size = 4096
        for chunk in random_chunks(4, 3000):
            repo.save_blob(BlobType.DATA, chunk)
        repo.cache_index()  # packs stored, not yet listed by an index file: nothing kept
        assert state.read_bytes() == before
        repo.flush()
        repo.cache_index()
        assert state.read_bytes() != before
    finally:
        repo.close()


def test_the_cached_index_is_not_written_again_while_its_index_files_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that adds no index file (a backup where nothing changed) leaves the
    cache's copy as it is: rewriting it cost a second copy of the index in memory at the
    backup's end. A new index file makes it write the copy again."""
    path, cache_root = tmp_path / "repo", tmp_path / "cache"
    _populated(path)
    repo, _ = _open(path, cache_root)
    try:
        repo.load_index()  # builds the copy
        state = cache_root / repo.config.id / "cairn-index" / repo.config.id
        written = state.stat().st_ino
    finally:
        repo.close()
    repo, _ = _open(path, cache_root)
    try:
        repo.load_index()  # from the copy
        repo.cache_index()
        assert state.stat().st_ino == written  # written aside and renamed: a new inode
        for chunk in random_chunks(3, 3000):
            repo.save_blob(BlobType.DATA, chunk)
        repo.flush()
        repo.cache_index()
        assert state.stat().st_ino != written
    finally:
        repo.close()
    with Repository.open(LocalBackend(path), PASSWORD) as plain:
        plain.load_index()
        expected = _index_entries(plain)
    assert _load_counting_decodes(path, cache_root, monkeypatch) == (expected, 0)
