"""The local metadata cache: snapshots, index files and tree packs kept on local disk.

Like restic's cache (and in its layout, so ``RESTIC_CACHE_DIR`` may be shared): one
directory per repository config ID under a root holding a ``CACHEDIR.TAG``; inside it a
``version`` file, ``snapshots/<id>``, ``index/<id>`` and ``data/<xx>/<id>`` (only packs
that hold tree blobs). A cached file is a byte-for-byte copy of the repository file, so
its SHA-256 must equal its name; an entry that fails that check is deleted and fetched
again. The cache is never needed for correctness: every failure to read or write it
falls back to the backend, and a deleted or damaged cache only costs speed.

Several processes may share one cache: files are written to a temporary name and renamed
into place, so a reader sees a complete file or none.

It lives in ``repo/`` (not ``backend/``) because deciding which packs to cache needs the
format: a pack is kept when its header lists only tree blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from cairn.backend.base import Backend, FileInfo, FileType, Handle, is_id_name
from cairn.errors import CairnError
from cairn.repo.crypto import OVERHEAD, Key
from cairn.repo.ids import BlobType
from cairn.repo.pack import MIN_PACK, parse_header

__all__ = ["Cache", "CacheUnavailable", "CachedBackend", "default_root"]

#: The layout version (restic's cache is version 1 with the same layout).
VERSION = 1
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by cairn.\n"
    b"# For information about cache directory tags see https://bford.info/cachedir/\n"
)
#: Temporary files older than this were left by a killed process and are removed.
_STALE_TMP = 3600.0
_TMP_PREFIX = ".tmp-"
_CACHED = (FileType.SNAPSHOT, FileType.INDEX, FileType.PACK)


class CacheUnavailable(CairnError):
    """The cache directory cannot be used (the caller goes on without a cache)."""


def default_root(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/cairn``, else ``~/.cache/cairn`` (the XDG base directory rule)."""
    xdg = environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "cairn"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / "cairn"


class Cache:
    """One repository's cache directory. Thread- and process-safe; never raises for a
    cache problem (a miss is returned instead)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Packs whose whole file was hashed by this process: later range reads trust it.
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: str | os.PathLike[str], repo_id: str) -> Cache:
        """Open (creating when needed) the cache of repository ``repo_id`` under ``root``.
        CacheUnavailable when the directory cannot be created or has a newer layout."""
        if not is_id_name(repo_id):
            # The ID comes from the repository's config; never let it name another path.
            raise CacheUnavailable(f"invalid repository ID {repo_id!r} for the cache")
        base = Path(root)
        path = base / repo_id
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            tag = base / "CACHEDIR.TAG"
            if not tag.exists():
                _write_atomic(tag, CACHEDIR_TAG)
            path.mkdir(mode=0o700, exist_ok=True)
            version_file = path / "version"
            try:
                found = int(version_file.read_text(encoding="ascii").strip() or "0")
            except (FileNotFoundError, ValueError):
                found = 0
            if found > VERSION:
                raise CacheUnavailable(
                    f"the cache in {path} has a newer layout (version {found}); not using it"
                )
            if found < VERSION:
                _write_atomic(version_file, f"{VERSION}\n".encode("ascii"))
            for t in _CACHED:
                (path / t.value).mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise CacheUnavailable(f"cannot use the cache directory {path}: {e}") from e
        return cls(path)

    # --- paths ------------------------------------------------------------------------

    def file(self, handle: Handle) -> Path | None:
        """Where ``handle`` is cached (restic's layout: packs sharded by two hex digits);
        None for a type that is not cached or a name that is not an ID (a name typed by a
        user must never reach outside the cache)."""
        if handle.type not in _CACHED or not is_id_name(handle.name):
            return None
        return self.path / handle.relpath()

    # --- reading ----------------------------------------------------------------------

    def get(self, handle: Handle) -> bytes | None:
        """The whole cached file, verified against its name; None when absent or bad."""
        path = self.file(handle)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if not _matches(hashlib.sha256(data).hexdigest(), handle.name):
            self._drop(path)
            return None
        return data

    def read_range(self, handle: Handle, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of a cached file; the whole file is hashed the
        first time this process reads it. None when absent, damaged or too short."""
        path = self.file(handle)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                if handle.name not in self._verified:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                    if not _matches(digest, handle.name):
                        self._drop(path)
                        return None
                    with self._lock:
                        self._verified.add(handle.name)
                f.seek(offset)
                data = f.read(length)
        except OSError:
            return None
        return data if len(data) == length else None

    def has(self, handle: Handle) -> bool:
        path = self.file(handle)
        return path is not None and path.is_file()

    def names(self, t: FileType) -> set[str]:
        """IDs of the cached files of one type."""
        return {p.name for p in self._files(t)}

    # --- writing ----------------------------------------------------------------------

    def put(self, handle: Handle, data: bytes | bytearray | memoryview) -> bool:
        """Store a copy, unless its SHA-256 differs from its name (then it is damaged and
        must not be cached). True when stored; a write failure is ignored."""
        path = self.file(handle)
        if path is None or not _matches(hashlib.sha256(data).hexdigest(), handle.name):
            return False
        try:
            try:
                _write_atomic(path, data)
            except FileNotFoundError:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _write_atomic(path, data)
        except OSError:
            return False
        with self._lock:
            self._verified.add(handle.name)
        return True

    def remove(self, handle: Handle) -> None:
        path = self.file(handle)
        if path is not None:
            self._drop(path)

    def evict(self, t: FileType, keep: set[str]) -> int:
        """Delete cached files of type ``t`` whose names are not in ``keep`` (the files
        the repository still has) and stale temporary files. Returns how many went."""
        removed = 0
        now = time.time()
        for d in self._dirs(t):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if is_id_name(name):
                    if name not in keep:
                        self._drop(Path(entry.path))
                        removed += 1
                elif name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_TMP:
                            os.unlink(entry.path)
        return removed

    # --- cairn's own files -------------------------------------------------------------

    def get_own(self, kind: str, name: str) -> bytes | None:
        """A file cairn keeps for itself under ``cairn-<kind>/<name>`` (restic ignores the
        folder); None when absent or unreadable. The caller authenticates the content."""
        path = self._own(kind, name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def put_own(self, kind: str, name: str, data: bytes | bytearray | memoryview) -> bool:
        """Store one of cairn's own files (written aside, then renamed into place). True
        when stored; a write failure is ignored."""
        path = self._own(kind, name)
        if path is None:
            return False
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            _write_atomic(path, data)
        except OSError:
            return False
        return True

    def trim_own(self, kind: str, keep_newest: int) -> None:
        """Delete all but the ``keep_newest`` most recently written files of ``kind``."""
        base = self.path / f"cairn-{kind}"
        try:
            entries = [e for e in os.scandir(base) if is_id_name(e.name)]
            entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns, reverse=True)
        except OSError:
            return
        for e in entries[keep_newest:]:
            with contextlib.suppress(OSError):
                os.unlink(e.path)

    def _own(self, kind: str, name: str) -> Path | None:
        if not kind.isalnum() or not is_id_name(name):
            return None
        return self.path / f"cairn-{kind}" / name

    # --- internals --------------------------------------------------------------------

    def _dirs(self, t: FileType) -> list[Path]:
        base = self.path / t.value
        if t is not FileType.PACK:
            return [base]
        try:
            return [Path(e.path) for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def _files(self, t: FileType) -> Iterator[Path]:
        for d in self._dirs(t):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if is_id_name(e.name):
                    yield Path(e.path)

    def _drop(self, path: Path) -> None:
        with self._lock:
            self._verified.discard(path.name)
        with contextlib.suppress(OSError):
            path.unlink()


class CachedBackend(Backend):
    """A backend seen through the cache: snapshots and index files are read from the
    cache when there and cached when loaded or saved; tree packs are cached when saved and
    when :meth:`load_tree_pack` reads them. Listing a cached type evicts cached files the
    repository no longer has. Every other call goes straight to the wrapped backend."""

    def __init__(self, backend: Backend, cache: Cache, key: Key) -> None:
        self.inner = backend
        self.cache = cache
        self.key = key
        self.location = backend.location
        self.connections = backend.connections
        self.read_span = backend.read_span
        # packs are read straight from the wrapped backend; the cache is files on disk
        self.fork_safe = backend.fork_safe
        self.consistent_listing = backend.consistent_listing
        self._fetching: dict[str, threading.Event] = {}
        self._fetch_lock = threading.Lock()
        # Packs whose remote bytes do not match their name: read them by range, uncached.
        self._uncacheable: set[str] = set()

    def create(self) -> None:
        self.inner.create()

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        self.inner.save(handle, data)
        if handle.type in (FileType.SNAPSHOT, FileType.INDEX) or (
            handle.type is FileType.PACK and self._tree_only(data)
        ):
            self.cache.put(handle, data)

    def temp_file(self, buffering: int) -> BinaryIO:
        return self.inner.temp_file(buffering)  # where the wrapped backend can keep it

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        self.inner.save_file(handle, file, size)
        fd = file.fileno()
        if handle.type in (FileType.SNAPSHOT, FileType.INDEX) or (
            handle.type is FileType.PACK
            and self._tree_only_in(lambda offset, n: os.pread(fd, n, offset), size)
        ):
            self.cache.put(handle, os.pread(fd, size, 0))

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if handle.type not in (FileType.SNAPSHOT, FileType.INDEX):
            # Packs are served from the cache only through load_tree_pack: check and
            # restore must read what the repository really holds.
            return self.inner.load(handle, offset, length)
        data = self.cache.get(handle)
        if data is None:
            if offset or length is not None:
                return self.inner.load(handle, offset, length)
            data = self.inner.load(handle)
            self.cache.put(handle, data)
            return data
        if offset or length is not None:
            end = len(data) if length is None else offset + length
            if end > len(data):
                return self.inner.load(handle, offset, length)  # the backend's own error
            return data[offset:end]
        return data

    def load_tree_pack(self, handle: Handle, offset: int, length: int) -> bytes:
        """A range of a pack the index says holds tree blobs: from the cache, else the
        whole pack is fetched once (by one thread) and cached."""
        name = handle.name
        data = self.cache.read_range(handle, offset, length)
        if data is not None or name in self._uncacheable:
            return data if data is not None else self.inner.load(handle, offset, length)
        with self._fetch_lock:
            event = self._fetching.get(name)
            leader = event is None
            if leader:
                event = self._fetching[name] = threading.Event()
        assert event is not None
        if not leader:
            event.wait()
            data = self.cache.read_range(handle, offset, length)
            return data if data is not None else self.inner.load(handle, offset, length)
        try:
            # Another leader may have finished between our miss and taking the lead.
            data = self.cache.read_range(handle, offset, length)
            if data is not None:
                return data
            if name in self._uncacheable:
                return self.inner.load(handle, offset, length)
            whole = self.inner.load(handle)
            if not self.cache.put(handle, whole):
                self._uncacheable.add(name)
        finally:
            with self._fetch_lock:
                del self._fetching[name]
            event.set()
        if offset + length > len(whole):
            return self.inner.load(handle, offset, length)  # the backend's own error
        return whole[offset : offset + length]

    def stat(self, handle: Handle) -> int:
        return self.inner.stat(handle)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type not in _CACHED:
            yield from self.inner.list(file_type)
            return
        seen: set[str] = set()
        for fi in self.inner.list(file_type):
            seen.add(fi.name)
            yield fi
        # Only after a complete listing: what it did not name is gone from the repository.
        self.cache.evict(file_type, seen)

    def remove(self, handle: Handle) -> None:
        try:
            self.inner.remove(handle)
        finally:
            if handle.type in _CACHED:
                self.cache.remove(handle)

    def exists(self, handle: Handle) -> bool:
        return self.inner.exists(handle)

    def close(self) -> None:
        self.inner.close()

    def _tree_only(self, data: bytes | bytearray | memoryview) -> bool:
        """True when a pack's own header lists only tree blobs (decided from the bytes
        about to be stored, before any index names the pack)."""
        view = memoryview(data)
        return self._tree_only_in(lambda offset, n: view[offset : offset + n], len(view))

    def _tree_only_in(self, read: Callable[[int, int], bytes | memoryview], n: int) -> bool:
        """:meth:`_tree_only` for a pack of ``n`` bytes read by ``read(offset, length)``."""
        if n < MIN_PACK:
            return False
        hlen = int.from_bytes(read(n - 4, 4), "little")
        if hlen < OVERHEAD or hlen + 4 > n:
            return False
        try:
            header = self.key.open(read(n - 4 - hlen, hlen))
            # Entry types: 0/2 data, 1/3 tree. A data pack (nearly every pack a backup
            # writes) is told by its first entry, without parsing a few thousand more.
            if not header or header[0] & 1 == 0:
                return False
            blobs = parse_header(header, b"")
        except CairnError:
            return False
        return bool(blobs) and all(b.type is BlobType.TREE for b in blobs)


def _matches(digest: str, name: str) -> bool:
    return hmac.compare_digest(digest, name)


def _write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
