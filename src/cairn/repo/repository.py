"""A restic-format repository opened with a key: the one object the layers above use.

It ties together the key files, the config, the JSON files, the index, the blob writer,
trees, snapshots and locks. It prints nothing and keeps no global state; every failure is a
``cairn.errors`` exception with a message a user can act on.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

from cairn import heap
from cairn.backend.base import Backend, FileType, Handle
from cairn.errors import (
    AlreadyExistsError,
    BackendError,
    BlobNotFoundError,
    CairnError,
    FormatError,
    IntegrityError,
    NotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SnapshotNotFoundError,
    UsageError,
)
from cairn.repo.cache import Cache, CachedBackend
from cairn.repo.compression import LEVELS
from cairn.repo.config import LATEST_VERSION, Config
from cairn.repo.crypto import Key
from cairn.repo.files import FileStore
from cairn.repo.ids import BlobType
from cairn.repo.index import (
    INDEX_FILE_BLOBS,
    MasterIndex,
    PackedBlob,
    encode_index_parts,
    iter_index,
)
from cairn.repo.keys import KdfParams, default_kdf, open_master_key
from cairn.repo.keys import add_key as _add_key
from cairn.repo.lock import RECHECK_DELAY, Lock, remove_stale_locks
from cairn.repo.node import Node
from cairn.repo.pack import coalesce, open_blob, read_header
from cairn.repo.packer import DEFAULT_PACK_SIZE, BlobSaver, BlobSealer
from cairn.repo.snapshot import Snapshot, latest, resolve_prefix
from cairn.repo.tree import decode_tree, encode_tree

__all__ = ["Config", "KdfParams", "OrphanPacks", "Repository"]

COMPRESSION_MODES = ("auto", "off", "max", "fastest", "better")
#: Gaps up to this size between wanted blobs are read and discarded (one request is cheaper).
_READ_GAP = 256 * 1024

_CONFIG = Handle(FileType.CONFIG)
#: The cache's copy of the in-memory index (one file, named by the repository ID): how many
#: index files it was built from, their names (32 bytes each), then
#: MasterIndex.dump_state(); sealed with the master key.
_INDEX_STATE = "index"


@dataclass
class OrphanPacks:
    """What :meth:`Repository.index_orphan_packs` found: packs in no index file."""

    #: Packs whose blobs were added to the index.
    packs: int = 0
    blobs: int = 0
    #: Index files written for them (empty when not writing).
    index_files: list[str] = field(default_factory=list)
    #: Orphan packs whose header could not be read: (pack ID, error); left for check.
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class Repository:
    """An open repository. Thread-safe for blob reads and :meth:`save_blob`."""

    def __init__(
        self,
        backend: Backend,
        config: Config,
        key: Key,
        *,
        key_name: str | None = None,
        compression: str = "auto",
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:
        self.backend = backend
        self.config = config
        self.key = key
        #: The key file the password opened (None right after ``init``'s key is unknown).
        self.key_name = key_name
        self.files = FileStore(backend, key, config.version)
        self._index = MasterIndex()
        #: The index files that describe :attr:`index` exactly (what the cache's copy of
        #: it is named after); None once it holds something no index file lists.
        self._index_files: set[str] | None = set()
        #: The index files the cache's copy of the index was built from, when this process
        #: read or wrote that copy: it is not written again while they are the same.
        self._cached_index_files: frozenset[str] | None = None
        self._compression = "auto"
        self.compression = compression
        self._pack_size = pack_size
        self._saver: BlobSaver | None = None
        #: Called before anything is written (packs, index files, snapshots): a lock taken
        #: with ``defer_recheck`` puts its ``confirm`` here, so reading and walking go on
        #: during restic's 0.2 s recheck delay and only the first write waits for it.
        self.write_gate: Callable[[], None] | None = None
        self._saver_lock = threading.Lock()
        self._locks: list[Lock] = []
        self._cached: CachedBackend | None = None

    # --- creating and opening ---------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        *,
        version: int = LATEST_VERSION,
        polynomial: int | None = None,
        kdf: KdfParams | None = None,
    ) -> Repository:
        """Create a new repository: directories, a key file for ``password``, the config.
        ``kdf`` None means parameters calibrated like restic's (or $CAIRN_KDF_PARAMS)."""
        if backend.exists(_CONFIG):
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        config = Config.new(version, polynomial)
        params = kdf or default_kdf()
        try:
            backend.create()
        except AlreadyExistsError as e:
            raise RepositoryExistsError(f"a repository already exists at {backend.location}") from e
        master = Key.random()
        while not master.valid():  # pragma: no cover - all-zero parts are astronomically rare
            master = Key.random()
        name = _add_key(backend, master, password, params)
        # The config comes last: a repository "exists" once it does, and by then a key does too.
        backend.save(_CONFIG, master.seal(config.encode()))
        return cls(backend, config, master, key_name=name)

    @classmethod
    def open(cls, backend: Backend, password: str, *, key_hint: str | None = None) -> Repository:
        """Open with a password. RepositoryNotFoundError, WrongPasswordError,
        UnsupportedRepositoryError or IntegrityError when that is what stands in the way."""
        try:
            sealed_config = backend.load(_CONFIG)
        except NotFoundError as e:
            raise RepositoryNotFoundError(
                f"there is no repository at {backend.location} (no config file); "
                f"`cairn init` creates one"
            ) from e
        master, name = open_master_key(backend, password, key_hint=key_hint)
        try:
            plain = master.open(sealed_config)
        except IntegrityError as e:
            raise IntegrityError(
                f"the config file of {backend.location} is damaged or belongs to another "
                f"repository ({e})"
            ) from e
        return cls(backend, Config.decode(plain), master, key_name=name)

    def add_key(
        self,
        password: str,
        kdf: KdfParams | None = None,
        *,
        username: str | None = None,
        hostname: str | None = None,
    ) -> str:
        """Add a key file for another password (same master key); returns its ID.
        ``username``/``hostname`` default to the current user and host (informational)."""
        return _add_key(
            self.backend,
            self.key,
            password,
            kdf or default_kdf(),
            username=username,
            hostname=hostname,
        )

    # --- the local cache --------------------------------------------------------------

    def use_cache(self, cache: Cache) -> None:
        """Read snapshots, index files and tree packs through ``cache`` from now on (call
        it right after opening, before any blob is saved)."""
        if self._cached is not None:
            raise UsageError("the repository already uses a cache")
        self._cached = CachedBackend(self.backend, cache, self.key)
        self.backend = self._cached
        self.files.backend = self._cached
        if self._saver is not None:
            self._saver.backend = self._cached

    @property
    def cache(self) -> Cache | None:
        """The local cache in use, if any."""
        return self._cached.cache if self._cached is not None else None

    # --- settings -----------------------------------------------------------------------

    @property
    def compression(self) -> str:
        """ "auto" | "off" | "max" | "fastest" | "better" (no effect in a version-1 repository)."""
        return self._compression

    @compression.setter
    def compression(self, mode: str) -> None:
        if mode not in COMPRESSION_MODES:
            raise UsageError(
                f"unknown compression mode {mode!r} (use {', '.join(COMPRESSION_MODES)})"
            )
        self._compression = mode
        self.files.level = LEVELS.get(mode, LEVELS["auto"])
        saver = getattr(self, "_saver", None)
        if saver is not None:
            saver.compression = mode

    @property
    def pack_size(self) -> int:
        """Target pack size in bytes (16 MiB by default)."""
        return self._pack_size

    @pack_size.setter
    def pack_size(self, size: int) -> None:
        if size < 1:
            raise UsageError("the pack size must be positive")
        self._pack_size = size
        if self._saver is not None:
            self._saver.pack_size = size

    # --- JSON files -----------------------------------------------------------------------

    def load_file(self, t: FileType, name: str) -> bytes:
        """Decrypt (and decompress) a snapshot/index/lock file; checks its name."""
        return self.files.load(t, name)

    def _gate(self) -> None:
        gate = self.write_gate
        if gate is not None:
            gate()

    def save_file(self, t: FileType, plaintext: bytes) -> str:
        """Compress (v2), seal and store a JSON file; returns its name."""
        self._gate()
        return self.files.save(t, plaintext)

    # --- index ----------------------------------------------------------------------------

    @property
    def index(self) -> MasterIndex:
        """The in-memory index (all loaded index files plus packs uploaded since)."""
        return self._index

    @index.setter
    def index(self, index: MasterIndex) -> None:
        """Replace the index (e.g. a fresh one before reloading after prune)."""
        self._index = index
        self._index_files = None if len(index) else set()
        if self._saver is not None:
            self._saver.index = index

    def load_index(
        self,
        *,
        on_error: Callable[[str, CairnError], None] | None = None,
        on_loaded: Callable[[int, int], None] | None = None,
        from_cache: bool = True,
    ) -> None:
        """Load every index file (in parallel) into :attr:`index`. Safe to call again:
        copies already known are not added twice. With ``on_error`` a file that cannot
        be loaded is reported to it (by name) and the others still load; ``on_loaded``
        hears (files done, files in all). With a local cache, the index it keeps from
        the last load stands for the files it was built from, unless ``from_cache`` is
        False (``check`` reads every file)."""
        names = [fi.name for fi in self.backend.list(FileType.INDEX)]
        if not names:
            return
        fresh = not len(self.index)
        covered = self._index_from_cache(names) if fresh and from_cache else set()
        if covered:
            # The copy as read and its plaintext are garbage now: twice the index (12 MiB
            # at 115,000 blobs) that the heap would otherwise keep.
            heap.trim()
            if on_loaded is not None:
                on_loaded(len(covered), len(names))
        todo = [name for name in names if name not in covered]
        failed: set[str] = set()

        # Fetching (I/O, decryption, zstd) runs in parallel; decoding is pure Python under
        # the GIL, so it gains nothing from running twice at once, and a file in another
        # layout than restic's holds ~6x its text in JSON objects while decoded (two
        # 50,000-blob files: 43 MiB at once). One decode at a time, and at most two
        # decompressed texts waiting for it, keep the peak to one file's worth.
        decoding = threading.Lock()
        in_hand = threading.BoundedSemaphore(2)

        def load(name: str) -> None:
            with in_hand:
                try:
                    text = self.files.load(FileType.INDEX, name)
                    with decoding:
                        packs, _ = iter_index(text)  # a damaged file fails here, whole
                        for pack_id, entries in packs:
                            self.index.add_pack(pack_id, entries)
                        del packs, text
                except CairnError as e:
                    failed.add(name)
                    if on_error is not None:
                        on_error(name, e)
                    elif isinstance(e, IntegrityError):
                        raise type(e)(f"index/{name[:8]}: {e}") from e
                    else:
                        raise

        if covered and self._index_files is not None:
            self._index_files |= covered
        if not todo:
            return
        workers = min(len(todo), max(4, 2 * self.backend.connections))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cairn-index") as pool:
            for i, _ in enumerate(pool.map(load, todo)):
                if on_loaded is not None:
                    on_loaded(len(covered) + i + 1, len(names))
        heap.trim()  # the decoded JSON is garbage now: ~6x the index text
        if self._index_files is not None:
            self._index_files.update(name for name in todo if name not in failed)
        self.cache_index()

    def _index_from_cache(self, names: list[str]) -> set[str]:
        """Fill the (empty) index from the local cache's copy of it, when every index
        file that copy was built from still exists; returns their names (none: no copy
        used). The copy is sealed with the repository's key, so it can be neither read
        nor forged by someone who can write to the cache but has no password."""
        cache = self.cache
        sealed = cache.get_own(_INDEX_STATE, self.config.id) if cache is not None else None
        if sealed is None:
            return set()
        try:
            covered, state = _split_index_state(self.key.open(sealed))
            del sealed  # not held while the index is built from the plaintext
            # A file gone (rewritten by prune or by another tool) may have named packs
            # that are gone too: then nothing of the copy can be trusted.
            if not covered <= set(names):
                return set()
            self.index.load_state(state)
        except (CairnError, ValueError):
            return set()
        self._cached_index_files = frozenset(covered)
        return covered

    def cache_index(self) -> None:
        """Keep the index in the local cache for the next run (see :meth:`load_index`),
        named after the index files that describe it. When blobs were saved, call it after
        :meth:`flush`, with no other thread saving blobs; nothing is kept while a blob
        waits for its pack or its index file, nor once the index holds blobs that no index
        file lists (the copy must never claim a blob that no index file names)."""
        cache = self.cache
        names = self._index_files
        if cache is None or names is None or (self._saver is not None and self._saver.busy):
            return
        current = frozenset(names)
        if current == self._cached_index_files:
            return  # the copy there is this index (a backup that added no blob)
        head = struct.pack("<Q", len(names)) + b"".join(bytes.fromhex(n) for n in sorted(names))
        if cache.put_own(
            _INDEX_STATE, self.config.id, self.key.seal(head + self.index.dump_state())
        ):
            self._cached_index_files = current

    def _index_file_written(self, name: str) -> None:
        if self._index_files is not None:
            self._index_files.add(name)

    # --- blobs ----------------------------------------------------------------------------

    def load_blob(self, t: BlobType, blob_id: bytes) -> bytes:
        """The plaintext of a blob, verified against its ID; other copies are tried when
        one is damaged or missing."""
        copies = self.index.lookup_all(t, blob_id)
        if not copies:
            raise BlobNotFoundError(
                f"{t.label} blob {blob_id.hex()} is not in the index (run `check`)"
            )
        error: CairnError | None = None
        for pb in copies:
            handle = Handle(FileType.PACK, pb.pack_id.hex())
            try:
                if t is BlobType.TREE and self._cached is not None:
                    # Packs hold one blob type: a tree blob's pack is a tree pack.
                    sealed = self._cached.load_tree_pack(handle, pb.offset, pb.length)
                else:
                    sealed = self.backend.load(handle, pb.offset, pb.length)
                return open_blob(self.key, pb, sealed)
            except (IntegrityError, BackendError) as e:
                error = e
        assert error is not None
        raise error

    def read_pack_blobs(
        self, pack_id: bytes, blobs: Sequence[PackedBlob]
    ) -> Iterator[tuple[PackedBlob, bytes | CairnError]]:
        """Read several blobs of one pack with few ranged reads, in offset order. A damaged
        or unreadable blob is yielded with its error instead of raising."""
        handle = Handle(FileType.PACK, pack_id.hex())
        for group in coalesce(blobs, _READ_GAP, self.backend.read_span):
            start = group[0].offset
            end = max(b.offset + b.length for b in group)
            try:
                data = memoryview(self.backend.load(handle, start, end - start))
            except BackendError as e:
                for b in group:
                    yield b, e
                continue
            for b in group:
                rel = b.offset - start
                try:
                    yield b, open_blob(self.key, b, data[rel : rel + b.length])
                except IntegrityError as e:
                    yield b, e

    def list_pack_blobs(self, pack_id: bytes, size: int | None = None) -> list[PackedBlob]:
        """The blobs a pack's own header lists (no index needed; for check and repair)."""
        return read_header(self.backend, self.key, pack_id, size)

    def index_orphan_packs(self, *, write: bool = True) -> OrphanPacks:
        """Index the packs no index file names, e.g. uploaded by a backup that was killed
        before it wrote their index: their blobs join :attr:`index` (so they are not
        uploaded again) and, with ``write``, new index files describe them. One listing;
        only orphans' headers are read. Call after :meth:`load_index`, holding a lock.

        A pack that another running backup uploaded but has not indexed yet is indexed
        twice in the end; duplicate index entries are harmless (restic accepts them)."""
        found = OrphanPacks()
        known = self.index.pack_ids()
        orphans = [
            fi for fi in self.backend.list(FileType.PACK) if bytes.fromhex(fi.name) not in known
        ]
        if not orphans:
            return found

        def header(size_name: tuple[int, str]) -> list[PackedBlob] | CairnError:
            size, name = size_name
            try:
                return self.list_pack_blobs(bytes.fromhex(name), size)
            except CairnError as e:
                return e

        workers = min(len(orphans), max(4, 2 * self.backend.connections))
        batch: list[tuple[bytes, list[PackedBlob]]] = []
        batch_blobs = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cairn-orphan") as pool:
            jobs = [(fi.size, fi.name) for fi in orphans]
            for (_, name), blobs in zip(jobs, pool.map(header, jobs), strict=True):
                if isinstance(blobs, CairnError):
                    found.unreadable.append((name, str(blobs)))
                    continue
                if not blobs:
                    continue
                batch.append((bytes.fromhex(name), blobs))
                batch_blobs += len(blobs)
                if batch_blobs >= INDEX_FILE_BLOBS:
                    self._index_recovered(batch, found, write)
                    batch, batch_blobs = [], 0
        if batch:
            self._index_recovered(batch, found, write)
        return found

    def _index_recovered(
        self, batch: list[tuple[bytes, list[PackedBlob]]], found: OrphanPacks, write: bool
    ) -> None:
        # The index file first: the packs exist (saves are atomic), so it may name them.
        if write:
            self._gate()
            name = self.files.save_parts(FileType.INDEX, encode_index_parts(batch))
            found.index_files.append(name)
            self._index_file_written(name)
        else:
            self._index_files = None  # the index now has packs no index file lists
        for _, blobs in batch:
            self.index.add(blobs)
            found.packs += 1
            found.blobs += len(blobs)

    def _blob_saver(self) -> BlobSaver:
        saver = self._saver
        if saver is None:
            with self._saver_lock:
                if self._saver is None:
                    self._saver = BlobSaver(
                        self.backend,
                        self.key,
                        self._index,
                        self.files,
                        version=self.config.version,
                        compression=self._compression,
                        pack_size=self._pack_size,
                        gate=self._gate,
                        on_index_file=self._index_file_written,
                    )
                saver = self._saver
        return saver

    def save_blob(
        self, t: BlobType, data: bytes | bytearray | memoryview, blob_id: bytes | None = None
    ) -> tuple[bytes, bool, int]:
        """Store a blob unless known (thread-safe). Returns (id, newly added, stored size
        including the 32 crypto bytes, 0 for a duplicate). Upload errors surface here or
        at :meth:`flush`."""
        return self._blob_saver().save_blob(t, data, blob_id)

    def blob_sealer(self) -> BlobSealer:
        """Compresses and seals blobs as :meth:`save_blob` would; for worker processes,
        whose sealed blobs the parent then stores with :meth:`save_sealed_blob`."""
        return self._blob_saver().sealer()

    def save_sealed_blob(
        self, t: BlobType, blob_id: bytes, sealed: bytearray | memoryview, ulen: int
    ) -> bool:
        """Store a blob sealed by :meth:`blob_sealer` unless known (thread-safe); True if
        it was added. ``blob_id`` is the ID of the plaintext that was sealed."""
        return self._blob_saver().save_sealed(t, blob_id, sealed, ulen)

    def flush(self) -> None:
        """Finish open packs, wait for their upload, write index files for them."""
        if self._saver is not None:
            self._saver.flush()

    # --- trees and snapshots ------------------------------------------------------------

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.load_blob(BlobType.TREE, tree_id))

    def save_tree(self, nodes: list[Node]) -> bytes:
        """Encode (byte-identical to restic) and store a tree; returns its ID."""
        return self.save_blob(BlobType.TREE, encode_tree(nodes))[0]

    def list_snapshots(self) -> list[str]:
        return [fi.name for fi in self.backend.list(FileType.SNAPSHOT)]

    def load_snapshot(self, snap_id: str) -> Snapshot:
        """A snapshot by full ID (or unique prefix)."""
        if len(snap_id) != 64:
            snap_id = resolve_prefix(snap_id, self.list_snapshots())
        try:
            return Snapshot.decode(self.files.load(FileType.SNAPSHOT, snap_id))
        except NotFoundError as e:
            raise SnapshotNotFoundError(f"snapshot {snap_id[:8]} does not exist") from e

    def load_snapshots(self) -> list[tuple[str, Snapshot]]:
        """Every snapshot (loaded in parallel), in listing order."""
        names = self.list_snapshots()
        if not names:
            return []
        workers = min(len(names), max(4, 2 * self.backend.connections))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cairn-snap") as pool:
            return list(zip(names, pool.map(self.load_snapshot, names), strict=True))

    def save_snapshot(self, snap: Snapshot) -> str:
        """Store a snapshot, after flushing pending blobs and their index (never a
        snapshot before its trees and index). Returns its ID."""
        self.flush()
        self._gate()
        return self.files.save(FileType.SNAPSHOT, snap.encode())

    def find_snapshot(
        self,
        ref: str,
        *,
        hosts: Sequence[str] = (),
        paths: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> tuple[str, Snapshot]:
        """``latest`` (newest matching the filters), a full ID or a unique prefix."""
        if ref == "latest":
            return latest(self.load_snapshots(), hosts, paths, tags)
        sid = resolve_prefix(ref, self.list_snapshots())
        return sid, self.load_snapshot(sid)

    # --- locks ------------------------------------------------------------------------------

    def lock(self, exclusive: bool = False, *, defer_recheck: bool = False) -> Lock:
        """Take a shared or exclusive lock (restic's protocol); use ``with repo.lock():``.
        It is refreshed in the background and removed on exit or :meth:`close`. With
        ``defer_recheck`` the caller must call the lock's ``confirm()`` before it writes
        (see :meth:`Lock.acquire`)."""
        delay = 0.0 if self.backend.consistent_listing else RECHECK_DELAY
        lk = Lock(self.files, exclusive, recheck_delay=delay).acquire(defer_recheck=defer_recheck)
        self._locks = [held for held in self._locks if held.name is not None]
        self._locks.append(lk)
        return lk

    def unlock(self, remove_all: bool = False) -> list[str]:
        """Remove stale locks (all locks with ``remove_all``); returns the removed IDs."""
        return remove_stale_locks(self.files, remove_all)

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background threads, release locks and close the backend. Does not flush."""
        if self._saver is not None:
            self._saver.close()
        for lk in self._locks:
            lk.release()
        self._locks.clear()
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _split_index_state(plain: bytes) -> tuple[set[str], memoryview]:
    """The index files a cached index was built from, and the index's state."""
    view = memoryview(plain)
    if len(view) < 8:
        raise FormatError("index state: too short")
    (count,) = struct.unpack_from("<Q", view)
    end = 8 + 32 * count
    if end > len(view):
        raise FormatError("index state: too short")
    names = {view[i : i + 32].hex() for i in range(8, end, 32)}
    return names, view[end:]
