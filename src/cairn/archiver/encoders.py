"""Forked worker processes that read, chunk, hash, compress and seal the backup's files.

A small file is a few microseconds of native work (read, SHA-256, zstd, AES, all releasing
the GIL) wrapped in some 100 us of Python that does not release it: on 100,000 small
files two reader threads kept 1.46 cores busy, much of it handing the GIL back and forth
(6 s of system time in an 11.8 s backup). Each encoder here is a process of its own, forked
from the backup, so it inherits the key and the index instead of receiving them.

The parent keeps the walk, the trees and the packs. An encoder returns, per file, the IDs
of its chunks and, for each chunk the index it inherited does not know, the sealed blob;
the parent stores those through :meth:`Repository.save_sealed_blob`, which drops any blob
another encoder or a thread stored first. A duplicate costs an encoder some wasted
compression, never a second copy in the repository.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import stat
from concurrent.futures import Future

from cairn import heap
from cairn.archiver.fileio import open_regular, read_small
from cairn.archiver.fsmeta import read_xattrs
from cairn.chunker import DEFAULT_BUFFER_SIZE, Chunker
from cairn.forking import PipePool
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.index import MasterIndex
from cairn.repo.node import ExtendedAttribute
from cairn.repo.packer import BlobSealer

#: Files this large or larger stay with the parent's threads, which spread one file's
#: chunks over every core; an encoder processes a file alone.
MAX_FILE = 1 << 20
#: A batch of small files for one encoder ends with the file that reaches this many bytes
#: (by lstat) or this many files: measured on 100k small files, 16-file batches left the
#: encoders idle a third of the time, waiting for the parent to take results.
BATCH_BYTES = 1 << 20
BATCH_FILES = 64
#: An encoder writes a batch's sealed blobs to a slot of memory shared with the parent,
#: which copies them into its pack from there: through the result pipe (64 KiB at a time)
#: they cost more system time than the sealing. A slot holds the largest batch (a file
#: below the minimum chunk size can end it), with room for the seals; what does not fit
#: (a file that grew) travels in the result.
_SLOT = BATCH_BYTES + (512 << 10) + (64 << 10)
#: The blob IDs an encoder remembers having sealed, to skip duplicates it meets again;
#: forgotten beyond this (the parent drops what it sees twice in any case).
_RECENT_LIMIT = 1 << 12

#: Where a sealed blob is: (offset, size) in the batch's slot, or the bytes themselves.
Sealed = tuple[int, int] | bytearray
#: One chunk: its ID, where its sealed blob is (None when the index knew the chunk), the
#: uncompressed length stored in the pack (0: stored as is), and the plaintext's length.
EncodedBlob = tuple[bytes, Sealed | None, int, int]
#: A file's extended attributes, and a warning if reading failed.
Xattrs = tuple[list[ExtendedAttribute], "str | None"]
#: One file: a warning (the file was skipped) or None, the bytes read, whether it changed
#: while it was read, its chunks, and its extended attributes when they were asked for.
EncodedFile = tuple["str | None", int, bool, list[EncodedBlob], "Xattrs | None"]
#: What an encoder is given per file: path, size by lstat, whether to read its xattrs.
FileTask = tuple[bytes, int, bool]


class _Encoder:
    """What a forked encoder works with, inherited from the parent."""

    def __init__(
        self, sealer: BlobSealer, index: MasterIndex, chunker: Chunker, arena: mmap.mmap
    ) -> None:
        self.sealer = sealer
        self.index = index
        self.chunker = chunker
        self.arena = arena
        self.view = memoryview(arena)
        #: The chunker's buffer, one for every file: faulted in only as far as files reach
        #: (an encoder's are under MAX_FILE).
        self.chunk_buffer = heap.private_buffer(DEFAULT_BUFFER_SIZE)
        self.recent: set[bytes] = set()
        self._start = 0  # the current slot's first byte in the arena
        self._pos = 0  # its next free byte
        self._end = 0  # its end

    def encode_files(self, files: list[FileTask], slot: int) -> list[EncodedFile]:
        self._start = self._pos = slot * _SLOT
        self._end = self._start + _SLOT
        opened: list[int | OSError] = []
        try:
            for path, _, _ in files:
                opened.append(_open_ahead(path))
            return [
                self.encode_file(path, size, want_xattrs, fd)
                for (path, size, want_xattrs), fd in zip(files, opened, strict=True)
            ]
        except BaseException:
            for fd in opened:  # encode_file closes each it gets; these it did not get to
                if isinstance(fd, int):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            raise

    def encode_file(
        self, path: bytes, expected_size: int, want_xattrs: bool, fd: int | OSError
    ) -> EncodedFile:
        """Read and seal one regular file, opened as ``fd`` (or the error opening it
        gave), as Archiver._store_content does in a thread. Closes ``fd``."""
        spath = os.fsdecode(path)
        if isinstance(fd, OSError):
            return f"{spath}: {fd.strerror or fd}", 0, False, [], None
        blobs: list[EncodedBlob] = []
        size = 0
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return f"{spath}: changed type during backup, skipped", 0, False, [], None
            xattrs = read_xattrs(fd) if want_xattrs else None
            min_size = self.chunker.min_size
            whole = read_small(fd, before.st_size, min_size) if before.st_size < min_size else None
            if whole is not None:
                if whole:
                    blobs.append(self._blob(whole))
                size = len(whole)
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                    # Sealed from the chunker's buffer, which _blob is done with before the
                    # next chunk is cut: no copy.
                    for chunk in self.chunker.chunks(f, buffer=self.chunk_buffer):
                        size += len(chunk)
                        blobs.append(self._blob(chunk))
            after = os.fstat(fd)
        except OSError as e:
            return f"{spath}: read error: {e.strerror or e}", 0, False, [], None
        finally:
            os.close(fd)
        changed = size != expected_size or after.st_mtime_ns != before.st_mtime_ns
        return None, size, changed, blobs, xattrs

    def _blob(self, data: bytes | memoryview) -> EncodedBlob:
        bid = blob_id(data)
        if bid in self.recent or self.index.has(BlobType.DATA, bid):
            return bid, None, 0, len(data)
        if len(self.recent) >= _RECENT_LIMIT:
            self.recent.clear()
        self.recent.add(bid)
        # Sealed straight into the slot when it has room for the worst case; else the
        # blob travels in the result.
        done = self.sealer.seal_into(BlobType.DATA, data, self.view[self._pos : self._end])
        if done is None:
            sealed, ulen = self.sealer.seal(BlobType.DATA, data)
            return bid, sealed, ulen, len(data)
        n, ulen = done
        self._pos += n
        return bid, (self._pos - n - self._start, n), ulen, len(data)


def _open_ahead(path: bytes) -> int | OSError:
    """Open a file of the batch and ask the kernel to start reading it now: with a cold
    cache the whole batch's reads are then in flight while the first file is sealed,
    rather than one read at a time per encoder."""
    try:
        fd = open_regular(path)
    except OSError as e:
        return e
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not on Linux
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    return fd


#: The encoder of a forked worker: set in the parent right before the fork.
_ENCODER: _Encoder | None = None


def _encode_files(task: tuple[list[FileTask], int]) -> list[EncodedFile]:
    global _TUNED
    assert _ENCODER is not None, "only called in an encoder forked by Encoders"
    if not _TUNED:
        # The parent maps its short-lived big buffers (Archiver.run). An encoder's big
        # allocations are the whole reads of files under 512 KiB, one per file: the heap
        # reuses those without a mapping and page faults each.
        heap.set_mmap_threshold(heap.MMAP_THRESHOLD_REUSED)
        _TUNED = True
    return _ENCODER.encode_files(*task)


_TUNED = False


class Encoders:
    """A pool of forked encoders, started at the first :meth:`submit`, and the shared
    slots their batches' sealed blobs come back in."""

    def __init__(
        self, sealer: BlobSealer, index: MasterIndex, chunker: Chunker, workers: int
    ) -> None:
        self.workers = workers
        #: Batches in the encoders at once, each holding a slot until the parent takes its
        #: results: four per worker measured 8% faster than two on 100k small files; with
        #: batches that span directories (fuller slots) three are as fast as four there,
        #: and on /usr, and touch less of the shared memory.
        self.window = 3 * workers + 1
        self._arena = mmap.mmap(-1, self.window * _SLOT)  # shared with the forked workers
        self._view = memoryview(self._arena)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.window):
            self._free.put(slot)
        self._encoder = _Encoder(sealer, index, chunker, self._arena)
        self._pool: PipePool | None = None

    def submit(self, files: list[FileTask]) -> tuple[Future[list[EncodedFile]], int]:
        """Encode ``files`` in a worker. Waits while every slot is
        taken. Returns the future, whose result has one :data:`EncodedFile` per file, and
        the slot, which the caller reads with :meth:`sealed` and then gives back with
        :meth:`release`."""
        if self._pool is None:
            global _ENCODER
            _ENCODER = self._encoder  # the workers inherit it
            self._pool = PipePool(_encode_files, self.workers)
        slot = self._free.get()
        try:
            return self._pool.submit((files, slot)), slot
        except BaseException:
            self._free.put(slot)
            raise

    def sealed(self, slot: int, where: Sealed) -> bytearray | memoryview:
        """A sealed blob of a batch's results, read from its slot (or as it came)."""
        if isinstance(where, bytearray):
            return where
        offset, size = where
        start = slot * _SLOT + offset
        return self._view[start : start + size]

    def release(self, slot: int) -> None:
        """The batch's results are taken: its slot may be written again."""
        self._free.put(slot)

    def shutdown(self, *, cancel: bool) -> None:
        """Wait for the workers to exit; with ``cancel``, drop the files not started."""
        global _ENCODER
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel=cancel)
        _ENCODER = None
