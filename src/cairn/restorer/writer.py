"""The content pipeline: read each pack once, write every blob to every place that uses it.

Blobs are grouped by pack so that each pack is read with few ranged requests
(``Repository.read_pack_blobs``); workers each take one pack at a time: forked processes
on a local repository (:mod:`cairn.restorer.forked`), else threads (the repository layer
decrypts, decompresses and verifies in native code that releases the GIL). Files are
pre-created at their final size and blobs land with ``pwrite`` at their offsets, so
memory is bounded by the blobs in flight (workers x one read span), never by file size.

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
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cairn import heap
from cairn.errors import CairnError
from cairn.repo.crypto import OVERHEAD
from cairn.repo.ids import BlobType
from cairn.repo.index import PackedBlob
from cairn.restorer.metadata import remove_existing, set_metadata
from cairn.restorer.plan import FileTable
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
class PackWork:
    """One pack's blobs to restore and where each goes, in arrays: small to keep for
    every pack at once and cheap to send to a worker process."""

    pack_id: bytes
    #: the blobs' IDs, 32 bytes each, and where they are stored in the pack
    ids: bytearray = field(default_factory=bytearray)
    offsets: array[int] = field(default_factory=lambda: array("q"))
    lengths: array[int] = field(default_factory=lambda: array("q"))
    uncompressed: array[int] = field(default_factory=lambda: array("q"))
    #: the uses: use u writes blob ``use_blob[u]`` to file ``use_file[u]`` at ``use_offset[u]``
    use_blob: array[int] = field(default_factory=lambda: array("q"))
    use_file: array[int] = field(default_factory=lambda: array("q"))
    use_offset: array[int] = field(default_factory=lambda: array("q"))

    def add_blob(self, pb: PackedBlob) -> int:
        self.ids += pb.id
        self.offsets.append(pb.offset)
        self.lengths.append(pb.length)
        self.uncompressed.append(pb.uncompressed_length)
        return len(self.offsets) - 1

    def add_use(self, blob: int, file: int, offset: int) -> None:
        self.use_blob.append(blob)
        self.use_file.append(file)
        self.use_offset.append(offset)

    def blobs(self) -> list[PackedBlob]:
        ids = self.ids
        return [
            PackedBlob(
                BlobType.DATA,
                bytes(ids[32 * i : 32 * i + 32]),
                self.pack_id,
                self.offsets[i],
                self.lengths[i],
                self.uncompressed[i],
            )
            for i in range(len(self.offsets))
        ]

    def uses_by_blob(self) -> list[list[int]]:
        """For each blob, the numbers of its uses."""
        by_blob: list[list[int]] = [[] for _ in self.offsets]
        for u, b in enumerate(self.use_blob):
            by_blob[b].append(u)
        return by_blob

    def blob_bytes(self) -> int:
        """Plaintext bytes of every use."""
        return sum(self.uncompressed[b] or self.lengths[b] - OVERHEAD for b in self.use_blob)


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
#: A spanning file's count of uses left while workers write it: never reaches zero there.
_NOT_IN_WORKER = 1 << 62


class ContentWriter:
    """Restores the content of the regular files ``numbers`` of ``table`` under ``root``;
    collects per-file failures (by file number)."""

    def __init__(
        self,
        repo: Repository,
        root: bytes,
        table: FileTable,
        numbers: list[int],
        tracker: ProgressTracker,
        *,
        sparse: bool = True,
        workers: int = 4,
        metadata: bool = False,
    ) -> None:
        self.repo = repo
        self.root = root
        self.table = table
        self.numbers = numbers
        self.tracker = tracker
        self.sparse = sparse
        self.workers = max(1, workers)
        #: Apply each file's metadata as soon as its content is complete, in the worker
        #: that completed it (spreads the chmod/chown/utime calls over the workers).
        self.metadata = metadata
        #: file number -> first error message
        self.failed: dict[int, str] = {}
        #: files whose size in the tree differs from their content
        self.warnings: list[str] = []
        n = len(table)
        self._remaining = [0] * n
        self._sizes = array("q", bytes(8 * n))
        self._lock = threading.Lock()
        self._created = threading.Condition(self._lock)
        self._state = bytearray(n)  # _NEW
        #: 1 for a file that one write of one blob fills completely
        self._whole = bytearray(n)
        #: files with blobs in more than one pack (found by ``_group``)
        self._spanning: list[int] = []

    def path(self, f: int) -> bytes:
        return self.root + b"/" + self.table.paths[f]

    # --- bookkeeping ------------------------------------------------------------

    def _fail(self, file: int, message: str) -> None:
        with self._lock:
            self.failed.setdefault(file, message)

    def _finish(self, f: int, fd: int | None = None) -> None:
        """File ``f`` has all its content: set its metadata (when asked to), through
        ``fd`` when it is still open (no path lookups: three fewer per file)."""
        if not self.metadata or f in self.failed:
            return
        warnings = set_metadata(self.path(f), *self.table.meta(f), fd=fd)
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
            return os.open(self.path(f), _REWRITE_FLAGS)
        try:
            # one blob written whole sets the size itself: no truncate for it
            return create_file(self.path(f), 0 if self._whole[f] else self._sizes[f])
        except OSError as e:
            self._fail(f, f"{os.fsdecode(self.path(f))}: cannot create: {e.strerror}")
            return None
        finally:
            with self._lock:
                self._state[f] = _READY
                self._created.notify_all()

    # --- planning ---------------------------------------------------------------

    def _group(self) -> list[PackWork]:
        """Look up every content blob and group the uses by pack."""
        lookup = self.repo.index.lookup
        table = self.table
        packs: dict[bytes, PackWork] = {}
        #: blob ID -> its pack's work and its number there (the index gives one copy)
        placed: dict[bytes, tuple[PackWork, int]] = {}
        for f in self.numbers:
            offset = 0
            count = 0
            first_pack = None
            spanning = False
            for bid in table.content(f):
                at = placed.get(bid)
                if at is None:
                    pb = lookup(BlobType.DATA, bid)
                    if pb is None:
                        path = os.fsdecode(self.path(f))
                        self._fail(f, f"{path}: data blob {bid.hex()} is not in the index")
                        break
                    length = pb.plaintext_length
                    if self.sparse and bid == ZERO_CHUNK_ID:
                        offset += length
                        continue
                    work = packs.get(pb.pack_id)
                    if work is None:
                        work = packs[pb.pack_id] = PackWork(pb.pack_id)
                    at = placed[bid] = (work, work.add_blob(pb))
                work, b = at
                if first_pack is None:
                    first_pack = work
                elif work is not first_pack:
                    spanning = True
                work.add_use(b, f, offset)
                count += 1
                offset += work.uncompressed[b] or work.lengths[b] - OVERHEAD
            if offset != table.sizes[f] and f not in self.failed:
                self.warnings.append(
                    f"{os.fsdecode(self.path(f))}: content is {offset} bytes, "
                    f"the snapshot says {table.sizes[f]}"
                )
            self._remaining[f] = count
            self._sizes[f] = offset
            # a sparse write may skip a blob's trailing zeros: only small blobs for sure
            if (
                count == 1
                and first_pack is not None
                and (offset < SPARSE_SEGMENT or not self.sparse)
            ):
                self._whole[f] = 1
            if spanning:
                self._spanning.append(f)
        return sorted(packs.values(), key=lambda w: w.pack_id)

    # --- running ----------------------------------------------------------------

    def run(self) -> None:
        """Fill the files pack by pack, in worker processes where that works (see
        :mod:`cairn.restorer.forked`), else in worker threads. A file is created when its
        first blob arrives (so creating 100k files does not hold the workers back); files
        without blobs to write are created by this thread meanwhile."""
        work = self._group()
        heap.trim()  # the lookups' garbage
        # Files that already failed (a blob missing from the index) are never written:
        # they and the files without blobs are this thread's to create.
        idle = [f for f in self.numbers if f in self.failed or not self._remaining[f]]
        for f in idle:
            self._remaining[f] = 0
        from cairn.restorer import forked  # noqa: PLC0415 - it imports this module

        processes = forked.processes_for(self.repo, len(work), self.workers)
        if processes > 1:
            forked.run_forked(self, work, idle, processes)
        else:
            self._run_threads(work, idle)

    def _run_threads(self, work: list[PackWork], idle: list[int]) -> None:
        jobs: queue.SimpleQueue[PackWork | None] = queue.SimpleQueue()
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
        self.create_idle(work, idle)
        for t in threads:
            t.join()

    def create_idle(self, work: list[PackWork], idle: list[int]) -> None:
        """Create the files that get no blob written (empty, all zeros, or failed)."""
        for f in idle:
            fd = self._open(f)
            if fd is not None:
                try:
                    self._finish(f, fd)
                finally:
                    os.close(fd)
        # files without blobs to write, and the zero chunks skipped, are done right away
        zero_bytes = sum(self._sizes[f] for f in self.numbers) - sum(w.blob_bytes() for w in work)
        self.tracker.add(files=len(idle), nbytes=zero_bytes)

    # --- for the forked workers (cairn.restorer.forked) -------------------------------

    def spanning_files(self) -> list[int]:
        """Files with blobs in more than one pack, none of them failed yet."""
        return [f for f in self._spanning if f not in self.failed]

    def create_spanning(self, f: int) -> None:
        """Create file ``f`` (with blobs in several packs) before the workers fork, so
        that each only opens it; its metadata waits for :meth:`finish_spanning`."""
        fd = self._open(f)
        if fd is not None:
            os.close(fd)
        self._remaining[f] = _NOT_IN_WORKER

    def finish_spanning(self) -> None:
        """Every pack is written: set the metadata of the files created by
        :meth:`create_spanning`."""
        done = 0
        for f in self._spanning:
            if f not in self.failed:
                self._finish(f)
                done += 1
        self.tracker.add(files=done)

    def absorb(
        self, files: int, nbytes: int, failed: list[tuple[int, str]], warnings: list[str]
    ) -> None:
        """Take in what a worker process did with one pack."""
        with self._lock:
            for f, message in failed:
                self.failed.setdefault(f, message)
            self.warnings.extend(warnings)
        self.tracker.add(files=files, nbytes=nbytes)

    # --- one pack -----------------------------------------------------------------

    def _worker(self, jobs: queue.SimpleQueue[PackWork | None]) -> None:
        while True:
            w = jobs.get()
            if w is None:
                return
            self.restore_work(w)

    def restore_work(self, w: PackWork) -> None:
        """Write one pack's blobs; a pack that fails part way fails the files it had left.

        A file's descriptor is closed after its last blob in this pack (after its metadata
        when that completes it): one pack can hold thousands of small files, more than the
        process may have open (a restore of /usr/share failed with EMFILE when each stayed
        open until the pack was done)."""
        uses = w.uses_by_blob()
        fds: dict[int, int] = {}
        in_pack = _count_files(w, range(len(w.use_file)))
        left = dict(in_pack)
        try:
            try:
                self._write_pack(w, uses, fds, in_pack, left)
            except Exception as e:  # noqa: BLE001 - a failing pack only fails its files
                msg = f"pack {w.pack_id.hex()[:16]}: {e or type(e).__name__}"
                completed = 0
                for f, n in left.items():
                    if n:
                        self._fail(f, f"{os.fsdecode(self.path(f))}: {msg}")
                        completed += self._leave(fds, f, in_pack[f])
                self.tracker.add(files=completed)
        finally:
            for fd in fds.values():
                os.close(fd)

    def fail_pack(self, w: PackWork, error: str) -> None:
        """Pack ``w`` was not written at all (its worker died): fail every file it had."""
        msg = f"pack {w.pack_id.hex()[:16]}: {error}"
        completed = 0
        for f, count in _count_files(w, range(len(w.use_file))).items():
            self._fail(f, f"{os.fsdecode(self.path(f))}: {msg}")
            completed += self._leave({}, f, count)
        self.tracker.add(files=completed)

    def _write_pack(
        self,
        w: PackWork,
        uses: list[list[int]],
        fds: dict[int, int],
        in_pack: dict[int, int],
        left: dict[int, int],
    ) -> None:
        """The blobs of pack ``w`` to their files; ``uses`` loses each blob's uses and
        ``left`` counts down each file's uses as they are handled."""
        number = {offset: b for b, offset in enumerate(w.offsets)}
        for pb, result in self.repo.read_pack_blobs(w.pack_id, w.blobs()):
            b = number[pb.offset]
            mine = uses[b]
            if not mine:
                continue
            uses[b] = []
            data = result if isinstance(result, bytes) else self._other_copy(pb, result)
            written = 0
            completed = 0
            for u in mine:
                f = w.use_file[u]
                if isinstance(data, CairnError):
                    self._fail(f, f"{os.fsdecode(self.path(f))}: {data}")
                elif self._write_use(fds, f, w.use_offset[u], data):
                    written += len(data)
                left[f] -= 1
                if not left[f]:
                    completed += self._leave(fds, f, in_pack[f])
            self.tracker.add(files=completed, nbytes=written)
        if any(uses):
            raise CairnError("the pack did not return every requested blob")

    def _leave(self, fds: dict[int, int], f: int, count: int) -> int:
        """File ``f`` had its last of ``count`` uses in this pack: when that completes it,
        set its metadata through its descriptor; close it. Returns 1 when completed."""
        fd = fds.pop(f, None)
        try:
            with self._lock:
                self._remaining[f] -= count
                complete = self._remaining[f] == 0
            if complete:
                self._finish(f, fd)
        finally:
            if fd is not None:
                os.close(fd)
        return int(complete)

    def _write_use(self, fds: dict[int, int], f: int, offset: int, data: bytes) -> bool:
        """Write one blob to one place; False when the file failed (now or before)."""
        if f in self.failed:
            return False
        try:
            fd = fds.get(f)
            if fd is None:
                fd = self._open(f)
                if fd is None:
                    return False
                if len(fds) >= _MAX_OPEN_PER_WORKER:
                    # Many files interleaved in one pack: close the longest-open one (it
                    # is opened again if it has more blobs here).
                    os.close(fds.pop(next(iter(fds))))
                fds[f] = fd
            write_blob(fd, data, offset, self.sparse)
        except OSError as e:
            self._fail(f, f"{os.fsdecode(self.path(f))}: cannot write: {e.strerror}")
            return False
        return True

    def _other_copy(self, pb: PackedBlob, error: CairnError) -> bytes | CairnError:
        """A damaged copy: the same blob may be stored intact in another pack."""
        if len(self.repo.index.lookup_all(BlobType.DATA, pb.id)) < 2:
            return error
        try:
            return self.repo.load_blob(BlobType.DATA, pb.id)
        except CairnError:
            return error


def _count_files(w: PackWork, uses: Iterable[int]) -> dict[int, int]:
    """How many of ``uses`` go to each file."""
    counts: dict[int, int] = {}
    for u in uses:
        f = w.use_file[u]
        counts[f] = counts.get(f, 0) + 1
    return counts
