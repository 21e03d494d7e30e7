"""The content pipeline: read each pack once, write every blob to every place that uses it.

Blobs are grouped by pack so that each pack is read with few ranged requests
(``Repository.read_pack_blobs``); worker threads each take one pack at a time, and the
repository layer decrypts, decompresses and verifies in the calling thread (native code
releasing the GIL), so packs are processed in parallel. Files are pre-created at their
final size and blobs land with ``pwrite`` at their offsets, so memory is bounded by the
blobs in flight (workers x one read span), never by file size.

Sparse restore (the default, like ``restic restore --sparse``): the all-zero 512 KiB chunk
that the chunker produces for runs of zeros is never read nor written, and aligned 64 KiB
runs of zeros inside other blobs are skipped; since files are truncated to size first,
skipped ranges read back as zeros and stay holes on the disk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cairn.errors import CairnError
from cairn.repo.ids import BlobType
from cairn.repo.index import PackedBlob
from cairn.repo.node import Node
from cairn.restorer.metadata import apply_metadata, remove_existing
from cairn.restorer.progress import ProgressTracker

if TYPE_CHECKING:
    from cairn.repo.repository import Repository

#: ID of the 512 KiB all-zero chunk (spec §13.3), the same in every repository.
ZERO_CHUNK_ID = hashlib.sha256(bytes(512 * 1024)).digest()
#: Zero runs are detected at this granularity (aligned to file offsets).
SPARSE_SEGMENT = 64 * 1024
_ZERO_SEGMENT = bytes(SPARSE_SEGMENT)

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_REWRITE_FLAGS = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


@dataclass(slots=True)
class _Use:
    """One place a blob goes: file number and offset."""

    file: int
    offset: int


#: where a blob goes: one place, or a list of them (a chunk that several files share)
_Uses = _Use | list[_Use]


def _each(uses: _Uses) -> list[_Use]:
    return uses if isinstance(uses, list) else [uses]


@dataclass(slots=True)
class _PackWork:
    pack_id: bytes
    blobs: list[PackedBlob]
    uses: dict[bytes, _Uses]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def write_blob(fd: int, data: bytes, offset: int, sparse: bool) -> None:
    """Write ``data`` at ``offset``; in sparse mode skip aligned all-zero segments."""
    view = memoryview(data)
    n = len(data)
    if not sparse or n < SPARSE_SEGMENT:
        _pwrite_all(fd, view, offset)
        return
    run_start = 0
    pos = (-offset) % SPARSE_SEGMENT
    while pos + SPARSE_SEGMENT <= n:
        # startswith compares in place (memcmp), no copy of the segment
        if data.startswith(_ZERO_SEGMENT, pos):
            if pos > run_start:
                _pwrite_all(fd, view[run_start:pos], offset + run_start)
            run_start = pos + SPARSE_SEGMENT
        pos += SPARSE_SEGMENT
    if n > run_start:
        _pwrite_all(fd, view[run_start:], offset + run_start)


def create_file(path: bytes, size: int) -> int:
    """Create (or replace) ``path`` as a regular file of ``size`` bytes (a hole); returns
    a descriptor open for writing."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except FileExistsError:
        remove_existing(path)
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    try:
        if size:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Descriptors one worker keeps open at most (the default limit is 1024 per process).
_MAX_OPEN_PER_WORKER = 64

#: A file's state in ContentWriter: not yet on disk, being created, created (or failed).
_NEW, _CREATING, _READY = 0, 1, 2


class ContentWriter:
    """Restores the content of regular files; collects per-file failures."""

    def __init__(
        self,
        repo: Repository,
        paths: Sequence[bytes],
        nodes: Sequence[Node],
        tracker: ProgressTracker,
        *,
        sparse: bool = True,
        workers: int = 4,
        metadata: bool = False,
    ) -> None:
        self.repo = repo
        self.paths = paths
        self.nodes = nodes
        self.tracker = tracker
        self.sparse = sparse
        self.workers = max(1, workers)
        #: Apply each file's metadata as soon as its content is complete, in the thread
        #: that completed it (spreads the chmod/chown/utime calls over the workers).
        self.metadata = metadata
        #: file number -> first error message
        self.failed: dict[int, str] = {}
        #: files whose size in the tree differs from their content
        self.warnings: list[str] = []
        self._remaining = [0] * len(paths)
        self._sizes: list[int] = []
        self._lock = threading.Lock()
        self._created = threading.Condition(self._lock)
        self._state = [_NEW] * len(paths)

    # --- bookkeeping ------------------------------------------------------------

    def _fail(self, file: int, message: str) -> None:
        with self._lock:
            self.failed.setdefault(file, message)

    def _done_uses(self, counts: dict[int, int], nbytes: int) -> None:
        finished: list[int] = []
        with self._lock:
            for f, c in counts.items():
                self._remaining[f] -= c
                if self._remaining[f] == 0:
                    finished.append(f)
        for f in finished:
            self._finish(f)
        self.tracker.add(files=len(finished), nbytes=nbytes)

    def _finish(self, f: int) -> None:
        """File ``f`` has all its content: set its metadata (when asked to)."""
        if not self.metadata or f in self.failed:
            return
        warnings = apply_metadata(self.paths[f], self.nodes[f])
        if warnings:
            with self._lock:
                self.warnings.extend(warnings)

    def _open(self, f: int) -> int | None:
        """A descriptor for writing file ``f``; the first caller creates the file at its
        final size, later ones wait for that and open it. None once creation failed."""
        with self._lock:
            while self._state[f] == _CREATING:
                self._created.wait()
            create = self._state[f] == _NEW
            if create:
                self._state[f] = _CREATING
        if not create:
            if f in self.failed:
                return None
            return os.open(self.paths[f], _REWRITE_FLAGS)
        try:
            return create_file(self.paths[f], self._sizes[f])
        except OSError as e:
            self._fail(f, f"{os.fsdecode(self.paths[f])}: cannot create: {e.strerror}")
            return None
        finally:
            with self._lock:
                self._state[f] = _READY
                self._created.notify_all()

    # --- planning ---------------------------------------------------------------

    def _group(self) -> list[_PackWork]:
        """Look up every content blob and group the uses by pack."""
        index = self.repo.index
        packs: dict[bytes, _PackWork] = {}
        for f, node in enumerate(self.nodes):
            offset = 0
            count = 0
            for bid in node.content or ():
                pb = index.lookup(BlobType.DATA, bid)
                if pb is None:
                    path = os.fsdecode(self.paths[f])
                    self._fail(f, f"{path}: data blob {bid.hex()} is not in the index")
                    break
                length = pb.plaintext_length
                if not (self.sparse and bid == ZERO_CHUNK_ID):
                    work = packs.get(pb.pack_id)
                    if work is None:
                        work = packs[pb.pack_id] = _PackWork(pb.pack_id, [], {})
                    use = _Use(f, offset)
                    uses = work.uses.get(bid)
                    if uses is None:
                        work.uses[bid] = use  # most blobs have one use: no list for them
                        work.blobs.append(pb)
                    elif isinstance(uses, list):
                        uses.append(use)
                    else:
                        work.uses[bid] = [uses, use]
                    count += 1
                offset += length
            if offset != node.size and f not in self.failed:
                self.warnings.append(
                    f"{os.fsdecode(self.paths[f])}: content is {offset} bytes, "
                    f"the snapshot says {node.size}"
                )
            self._remaining[f] = count
            self._sizes.append(offset)
        return sorted(packs.values(), key=lambda w: w.pack_id)

    # --- running ----------------------------------------------------------------

    def run(self) -> None:
        """Fill the files pack by pack with worker threads. A file is created when its
        first blob arrives (so creating 100k files does not hold the workers back); files
        without blobs to write are created by this thread meanwhile."""
        work = self._group()
        # Files that already failed (a blob missing from the index) are never written:
        # they and the files without blobs are this thread's to create.
        idle = [f for f in range(len(self.paths)) if f in self.failed or not self._remaining[f]]
        for f in idle:
            self._remaining[f] = 0
        jobs: queue.SimpleQueue[_PackWork | None] = queue.SimpleQueue()
        for w in work:
            jobs.put(w)
        threads = [
            threading.Thread(target=self._worker, args=(jobs,), daemon=True)
            for _ in range(min(self.workers, len(work)))
        ]
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.start()
        for f in idle:
            fd = self._open(f)
            if fd is not None:
                os.close(fd)
                self._finish(f)
        # files without blobs to write, and the zero chunks skipped, are done right away
        self.tracker.add(files=len(idle), nbytes=self._zero_bytes(work))
        for t in threads:
            t.join()

    def _zero_bytes(self, work: list[_PackWork]) -> int:
        """Bytes that need no write at all (the skipped zero chunks)."""
        total = sum(self._sizes)
        for w in work:
            for b in w.blobs:
                total -= b.plaintext_length * len(_each(w.uses[b.id]))
        return total

    def _worker(self, jobs: queue.SimpleQueue[_PackWork | None]) -> None:
        while True:
            w = jobs.get()
            if w is None:
                return
            pending = dict(w.uses)
            try:
                self._restore_pack(w, pending)
            except Exception as e:  # noqa: BLE001 - a failing pack only fails its files
                msg = f"pack {w.pack_id.hex()[:16]}: {e or type(e).__name__}"
                for uses in pending.values():
                    for u in _each(uses):
                        self._fail(u.file, f"{os.fsdecode(self.paths[u.file])}: {msg}")
                self._done_uses(_count_uses(pending.values()), 0)

    def _restore_pack(self, w: _PackWork, pending: dict[bytes, _Uses]) -> None:
        """Write the blobs of one pack; ``pending`` loses each blob as it is handled.

        A file's descriptor is closed after its last blob in this pack: one pack can hold
        thousands of small files, more than the process may have open (a restore of
        /usr/share failed with EMFILE when each stayed open until the pack was done)."""
        fds: dict[int, int] = {}
        left = _count_uses(w.uses.values())
        try:
            for pb, result in self.repo.read_pack_blobs(w.pack_id, w.blobs):
                found = pending.pop(pb.id, None)
                if found is None:
                    continue
                uses = _each(found)
                data = result if isinstance(result, bytes) else self._other_copy(pb, result)
                if isinstance(data, CairnError):
                    for u in uses:
                        self._fail(u.file, f"{os.fsdecode(self.paths[u.file])}: {data}")
                        self._release_fd(fds, left, u.file)
                    self._done_uses(_count_uses([uses]), 0)
                    continue
                written = 0
                for u in uses:
                    try:
                        if self._write_use(fds, u, data):
                            written += len(data)
                    finally:
                        self._release_fd(fds, left, u.file)
                self._done_uses(_count_uses([uses]), written)
        finally:
            for fd in fds.values():
                os.close(fd)
        if pending:
            raise CairnError("the pack did not return every requested blob")

    def _write_use(self, fds: dict[int, int], u: _Use, data: bytes) -> bool:
        """Write one blob to one place; False when the file failed (now or before)."""
        if u.file in self.failed:
            return False
        try:
            fd = fds.get(u.file)
            if fd is None:
                fd = self._open(u.file)
                if fd is None:
                    return False
                if len(fds) >= _MAX_OPEN_PER_WORKER:
                    # Many files interleaved in one pack: close the longest-open one (it
                    # is opened again if it has more blobs here).
                    os.close(fds.pop(next(iter(fds))))
                fds[u.file] = fd
            write_blob(fd, data, u.offset, self.sparse)
        except OSError as e:
            self._fail(u.file, f"{os.fsdecode(self.paths[u.file])}: cannot write: {e.strerror}")
            return False
        return True

    @staticmethod
    def _release_fd(fds: dict[int, int], left: dict[int, int], f: int) -> None:
        """One use of file ``f`` in this pack is handled; close it after its last one."""
        left[f] -= 1
        if not left[f]:
            fd = fds.pop(f, None)
            if fd is not None:
                os.close(fd)

    def _other_copy(self, pb: PackedBlob, error: CairnError) -> bytes | CairnError:
        """A damaged copy: the same blob may be stored intact in another pack."""
        if len(self.repo.index.lookup_all(BlobType.DATA, pb.id)) < 2:
            return error
        try:
            return self.repo.load_blob(BlobType.DATA, pb.id)
        except CairnError:
            return error


def _count_uses(use_lists: Iterable[_Uses]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for uses in use_lists:
        for u in _each(uses):
            counts[u.file] = counts.get(u.file, 0) + 1
    return counts
