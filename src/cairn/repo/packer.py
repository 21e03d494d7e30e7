"""Saving blobs: dedup, compress + seal in the caller's thread, fill packs, upload them in
the background, then write index files (spec §7, §8, §14).

Many worker threads call :meth:`BlobSaver.save_blob` at once. The expensive, GIL-releasing
work (zstd, AES, SHA-256) runs in those threads outside any lock; the lock only guards the
dedup set and the append to the open pack. A full pack goes to a bounded queue drained by
uploader threads (one per backend connection), so at most a few packs are in memory. After
a pack is stored its blobs enter the in-memory index and the list of blobs an index file
must still describe; index files are written only for packs that exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from cairn import heap
from cairn.backend.base import Backend, FileType, Handle
from cairn.backend.directfile import DirectFile
from cairn.chunker import MAX_SIZE as MAX_CHUNK
from cairn.errors import CairnError
from cairn.repo.compression import LEVELS, compress, compress_bound, compress_into
from cairn.repo.crypto import IV_SIZE, OVERHEAD, Key
from cairn.repo.files import FileStore
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.index import INDEX_FILE_BLOBS, MasterIndex, PackedBlob, encode_index_parts
from cairn.repo.pack import COMPRESSED_ENTRY, MAX_HEADER, header_entry, seal_header

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
#: Write buffer of a pack's temporary file: small blobs (a few KiB sealed) would otherwise
#: each cost a write call, made while holding the pack lock.
_WRITE_BUFFER = 1 << 20
_MAX_BLOB = (1 << 32) - 1

#: (type, id, offset, length, uncompressed_length), as MasterIndex.add_pack takes them.
Entry = tuple[int, bytes, int, int, int]


class _Pack:
    """A pack being filled: an anonymous temporary file, its used size, and the header
    entries.

    The sealed blobs go to the file, not to memory: a pack costs a write buffer (or, for a
    local repository, a direct file's 1 MiB block) while it fills and waits for an
    uploader, not its whole size (measured: six in-memory 17 MiB pack buffers were a third
    of a backup's peak RSS)."""

    __slots__ = ("type", "file", "size", "entries", "header")

    def __init__(self, t: BlobType, file: BinaryIO) -> None:
        self.type = t
        self.file = file
        self.size = 0
        self.entries: list[Entry] = []
        self.header = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)
        self.size += len(data)

    def append(self, sealed: bytes | bytearray | memoryview, entry: Entry, header: bytes) -> None:
        self.write(sealed)
        self.entries.append(entry)
        self.header += header


class BlobSealer:
    """Compresses and seals blobs the way a repository stores them, and nothing else: no
    lock, no index, no file. Made for worker processes forked during a backup, which seal
    blobs and hand them to :meth:`BlobSaver.save_sealed` in the parent."""

    __slots__ = ("key", "version", "compression")

    def __init__(self, key: Key, version: int, compression: str) -> None:
        if compression != "off" and compression not in LEVELS:
            raise ValueError(f"unknown compression mode {compression!r}")
        self.key = key
        self.version = version
        self.compression = compression

    def compresses(self, t: BlobType, n: int) -> bool:
        """Whether a blob of this type and length is stored compressed: v1 never
        compresses; "off" leaves data blobs alone (trees are still compressed, as restic
        does); an empty blob is never marked compressed (length 0 is ambiguous)."""
        return not (
            self.version < 2 or n == 0 or (t is BlobType.DATA and self.compression == "off")
        )

    def seal(self, t: BlobType, data: bytes | bytearray | memoryview) -> tuple[bytearray, int]:
        """The blob as it goes into a pack, and its uncompressed length (0: not compressed)."""
        n = len(data)
        if self.compresses(t, n):
            level = LEVELS.get(self.compression, LEVELS["auto"])
            sealed, ulen = self.key.seal(compress(data, level)), n
        else:
            sealed, ulen = self.key.seal(data), 0
        _check_size(sealed, n)
        return sealed, ulen

    def seal_into(
        self, t: BlobType, data: bytes | bytearray | memoryview, out: memoryview
    ) -> tuple[int, int] | None:
        """Seal the blob into ``out`` (writable): its sealed length and uncompressed length
        (0: not compressed), or None when ``out`` might be too small (nothing written)."""
        n = len(data)
        if self.compresses(t, n):
            if len(out) < compress_bound(n) + OVERHEAD:
                return None
            level = LEVELS.get(self.compression, LEVELS["auto"])
            size, ulen = compress_into(data, out[IV_SIZE:], level), n
        else:
            if len(out) < n + OVERHEAD:
                return None
            out[IV_SIZE : IV_SIZE + n] = data
            size, ulen = n, 0
        sealed = self.key.seal_in_place(out, size)
        _check_size(sealed, n)
        return len(sealed), ulen

    def seal_reusing(
        self, t: BlobType, data: bytes | bytearray | memoryview
    ) -> tuple[bytearray | memoryview, int]:
        """:meth:`seal`, into this thread's reused buffer when the blob fits (a chunk always
        does). **The view is valid only until the thread's next call**: for a caller that
        writes the blob out at once. It spares two buffers per blob (compressed, sealed),
        which the heap would serve (and fragment) or the kernel map and fault in afresh."""
        buffer = _SealBuffer.of_thread()
        done = self.seal_into(t, data, buffer.view)
        if done is None:
            return self.seal(t, data)
        buffer.reached = max(buffer.reached, done[0])
        return buffer.view[: done[0]], done[1]


def _check_size(sealed: bytearray | memoryview, plain: int) -> None:
    if len(sealed) > _MAX_BLOB:
        raise CairnError(f"blob of {plain} bytes is too large for a pack")


_local = threading.local()


class _SealBuffer:
    """A sealing thread's reused buffer: room for the largest chunk (8 MiB) compressed at
    worst and sealed. Anonymous memory, faulted in only as far as blobs reach; what one
    blob took beyond the first 2 MiB is given back before the next one (most blobs are
    smaller: holding every thread's largest blob ever cost up to 6 MiB a blob thread)."""

    SIZE = compress_bound(MAX_CHUNK) + OVERHEAD
    RESIDENT = 2 << 20

    def __init__(self) -> None:
        self.memory = heap.private_buffer(self.SIZE)
        self.view = memoryview(self.memory)
        self.reached = 0  # bytes written since the pages beyond RESIDENT were given back

    @classmethod
    def of_thread(cls) -> _SealBuffer:
        buffer: _SealBuffer | None = getattr(_local, "buffer", None)
        if buffer is None:
            buffer = _local.buffer = cls()
        elif buffer.reached > cls.RESIDENT:
            # The last blob is written out by now (see seal_reusing).
            buffer.memory.madvise(mmap.MADV_DONTNEED, cls.RESIDENT, buffer.reached - cls.RESIDENT)
            buffer.reached = cls.RESIDENT
        return buffer


class BlobSaver:
    """Thread-safe blob writer for one repository."""

    def __init__(
        self,
        backend: Backend,
        key: Key,
        index: MasterIndex,
        files: FileStore,
        *,
        version: int,
        compression: str = "auto",
        pack_size: int = DEFAULT_PACK_SIZE,
        gate: Callable[[], None] | None = None,
        on_index_file: Callable[[str], None] | None = None,
    ) -> None:
        if compression != "off" and compression not in LEVELS:
            raise ValueError(f"unknown compression mode {compression!r}")
        self.backend = backend
        #: hears the name of every index file written
        self.on_index_file = on_index_file
        self.key = key
        self.index = index
        self.files = files
        self.version = version
        self.compression = compression
        self.pack_size = pack_size
        #: called before anything is written (see Repository.write_gate)
        self.gate = gate
        self._lock = threading.Lock()
        self._open: dict[BlobType, _Pack] = {}
        self._pending: set[tuple[int, bytes]] = set()
        #: Stored packs no index file describes yet, with their blobs packed by
        #: _pack_entries; _unsaved_count counts those blobs.
        self._unsaved: list[tuple[bytes, bytes]] = []
        self._unsaved_count = 0
        self._index_lock = threading.Lock()
        self._error: BaseException | None = None
        self._workers = max(1, int(getattr(backend, "connections", 2) or 1))
        # Bounded: a producer blocks while every uploader is busy and the queue is full.
        self._queue: queue.Queue[_Pack | None] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._sealer: BlobSealer | None = None

    # --- public ---------------------------------------------------------------

    def save_blob(
        self, t: BlobType, data: bytes | bytearray | memoryview, bid: bytes | None = None
    ) -> tuple[bytes, bool, int]:
        """Store a blob unless the index or a pending pack has it already.
        Returns (id, newly added, stored size incl. the 32 crypto bytes; 0 for a duplicate)."""
        if bid is None:
            bid = blob_id(data)
        if not self._claim(t, bid):
            return bid, False, 0
        key = (int(t), bid)
        try:
            sealed, ulen = self.sealer().seal_reusing(t, data)
        except BaseException:
            with self._lock:
                self._pending.discard(key)
            raise
        for full in self._append(t, bid, sealed, ulen):
            self._submit(full)
        return bid, True, len(sealed)

    def sealer(self) -> BlobSealer:
        """How this saver seals blobs (with its current compression setting)."""
        sealer = self._sealer
        if sealer is None or sealer.compression != self.compression:
            sealer = self._sealer = BlobSealer(self.key, self.version, self.compression)
        return sealer

    def save_sealed(
        self, t: BlobType, bid: bytes, sealed: bytearray | memoryview, ulen: int
    ) -> bool:
        """Store a blob that :meth:`BlobSealer.seal` sealed elsewhere, unless the index or
        a pending pack has it already. ``bid`` must be the plaintext's ID: the caller
        computed it from the data it sealed. True if it was added."""
        if not self._claim(t, bid):
            return False
        for full in self._append(t, bid, sealed, ulen):
            self._submit(full)
        return True

    def flush(self) -> None:
        """Finish the open packs, wait for every upload, then write the index files that
        describe them. Call it when no other thread is saving blobs."""
        self._raise_error()
        with self._lock:
            packs = [p for p in self._open.values() if p.entries]
            self._open.clear()
        for p in packs:
            self._submit(p)
        self._queue.join()
        self._raise_error()
        self._write_index(force=True)

    def close(self) -> None:
        """Stop the uploader threads (without flushing: unflushed blobs are dropped)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for th in self._threads:
            th.join()
        self._threads.clear()
        with self._lock:
            files = [p.file for p in self._open.values()]
            self._open.clear()
        for f in files:
            f.close()

    @property
    def busy(self) -> bool:
        """Whether some blob is not yet both stored and listed in an index file. Pending
        is read first: a pack's blobs leave it only after the pack joined ``_unsaved``."""
        return bool(self._pending) or bool(self._unsaved)

    @property
    def pending_count(self) -> int:
        """Blobs accepted but not yet in the index (for progress and tests)."""
        return len(self._pending)

    # --- internals --------------------------------------------------------------

    def _claim(self, t: BlobType, bid: bytes) -> bool:
        """Reserve a blob for this caller to store: False when the index or a pending pack
        has it already (a duplicate)."""
        self._raise_error()
        if self._closed:
            raise CairnError("the repository was closed; blobs can no longer be saved")
        key = (int(t), bid)
        with self._lock:
            if key in self._pending or self.index.has(t, bid):
                return False
            self._pending.add(key)
        return True

    def _append(
        self, t: BlobType, bid: bytes, sealed: bytearray | memoryview, ulen: int
    ) -> list[_Pack]:
        """Add a sealed blob to the open pack of its type; returns the packs now full.

        A pack is closed *before* a blob would take it past ``pack_size``."""
        n = len(sealed)
        entry_size = COMPRESSED_ENTRY if ulen else COMPRESSED_ENTRY - 4
        full: list[_Pack] = []
        with self._lock:
            pack = self._open.get(t)
            if pack is not None and pack.size and pack.size + n > self.pack_size:
                full.append(self._open.pop(t))
                pack = None
            if pack is None:
                # A new file per pack, never one reused: the backend may have kept the
                # last one as the stored pack (LocalBackend links it into place).
                pack = self._open[t] = _Pack(t, self.backend.temp_file(_WRITE_BUFFER))
            entry: Entry = (int(t), bid, pack.size, n, ulen)
            pack.append(sealed, entry, header_entry(t, n, ulen, bid))
            header_full = len(pack.header) + entry_size + COMPRESSED_ENTRY + OVERHEAD > MAX_HEADER
            if pack.size >= self.pack_size or header_full:
                full.append(self._open.pop(t))
        return full

    def _submit(self, pack: _Pack) -> None:
        if not self._threads and not self._closed:
            with self._lock:
                if not self._threads:
                    for i in range(self._workers):
                        th = threading.Thread(
                            target=self._uploader, name=f"cairn-pack-upload-{i}", daemon=True
                        )
                        th.start()
                        self._threads.append(th)
        self._queue.put(pack)

    def _uploader(self) -> None:
        while True:
            pack = self._queue.get()
            if pack is None:
                self._queue.task_done()
                return
            try:
                if self._error is None:
                    self._upload(pack)
            except BaseException as e:  # handed to the caller at the next save/flush
                if self._error is None:
                    self._error = e
            finally:
                with self._lock:
                    for t, bid, *_ in pack.entries:
                        self._pending.discard((t, bid))
                with contextlib.suppress(OSError):
                    pack.file.close()
                self._queue.task_done()

    def _upload(self, pack: _Pack) -> None:
        if self.gate is not None:
            self.gate()
        pack.write(seal_header(self.key, bytes(pack.header)))
        pack.file.flush()
        if isinstance(pack.file, DirectFile):
            pack_id = pack.file.sha256()  # hashed as it was written
        else:
            pack_id = _file_sha256(pack.file.fileno(), pack.size)
        self.backend.save_file(Handle(FileType.PACK, pack_id.hex()), pack.file, pack.size)
        # Index before dropping from "pending" (done by the caller): a concurrent save of
        # the same blob always finds it in one of the two.
        self.index.add_pack(pack_id, pack.entries)
        with self._index_lock:
            self._unsaved.append((pack_id, _pack_entries(pack.entries)))
            self._unsaved_count += len(pack.entries)
            full = self._unsaved_count >= INDEX_FILE_BLOBS
        if full:
            self._write_index(force=False)

    def _write_index(self, force: bool) -> None:
        """Write one index file for the uploaded packs not yet described by one."""
        with self._index_lock:
            if not self._unsaved or (not force and self._unsaved_count < INDEX_FILE_BLOBS):
                return
            if self.gate is not None:
                self.gate()
            batch, self._unsaved, self._unsaved_count = self._unsaved, [], 0
            try:
                name = self.files.save_parts(FileType.INDEX, encode_index_parts(_as_blobs(batch)))
            except BaseException:
                # Keep them for the next attempt: the packs exist but no index names them yet.
                self._unsaved = batch + self._unsaved
                self._unsaved_count += sum(len(e) // _ENTRY.size for _, e in batch)
                raise
            if self.on_index_file is not None:
                self.on_index_file(name)

    def _raise_error(self) -> None:
        err = self._error
        if err is not None:
            if isinstance(err, CairnError):
                raise err
            raise CairnError(f"uploading a pack failed: {err}") from err


#: A stored blob waiting for its index file: type, ID, offset, length, uncompressed length.
_ENTRY = struct.Struct("<B32sQQQ")


def _pack_entries(entries: list[Entry]) -> bytes:
    """A pack's blobs in 57 bytes each. As tuples (with their ID and int objects) they
    took about 230 bytes each, and up to 50,000 wait for an index file: up to 11 MB."""
    pack = _ENTRY.pack
    return b"".join([pack(t, bid, off, length, ulen) for t, bid, off, length, ulen in entries])


def _as_blobs(
    batch: Sequence[tuple[bytes, bytes]],
) -> Iterator[tuple[bytes, list[PackedBlob]]]:
    """The blobs of each pack, built when the index file's writer takes the pack."""
    for pid, packed in batch:
        yield (
            pid,
            [
                PackedBlob(BlobType(t), bid, pid, off, length, ulen)
                for t, bid, off, length, ulen in _ENTRY.iter_unpack(packed)
            ],
        )


def _file_sha256(fd: int, size: int) -> bytes:
    """SHA-256 of a file's first ``size`` bytes, read through one 1 MiB buffer.

    Not mapped: mapped pages count as the process's memory, up to a whole pack (16 MiB)
    per uploader. Not hashed while the pack is written either: that runs under the
    packer's lock, in the thread that takes the encoders' results, which it slowed."""
    digest = hashlib.sha256()
    buf = bytearray(min(size, 1 << 20) or 1)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(buf), size - offset)]], offset)
        if n <= 0:
            raise CairnError(f"pack file ended {size - offset} bytes early")
        digest.update(view[:n])
        offset += n
    return digest.digest()
