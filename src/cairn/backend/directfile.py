"""Pack files written around the page cache (O_DIRECT), hashed as they are written.

Written the usual way, a pack's bytes are copied into the page cache, written back when
the pack is fsynced, and read once more to hash it. For a backup of 3 GB of big files
(2 GB of packs) that was 1.5-2 s of CPU in the kernel out of 14. With O_DIRECT the disk
takes the bytes from our own buffer: 2 GB in 16 MiB files cost 0.15 s of CPU against
1.7 s buffered, fsync included (measured on this machine). The bytes are hashed from that
buffer too, so a pack's ID needs no second read.

A file gathers its writes into aligned blocks. A full block goes to the backend's hashing
thread, then to its writing thread, while the file fills the next one; the writing thread
also recycles the blocks, so their number stays small (the open packs' blocks, a few
waiting, one being hashed, one being written).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading

#: O_DIRECT's alignment of offsets, lengths and buffer addresses. 4096 suits both 512-byte
#: and 4 KiB sector devices; blocks are mapped, so page-aligned.
ALIGN = 4096
#: A block: one write call and one hash update. Smaller blocks cost more than they save:
#: at 256 KiB a backup of 3 GB of big files took 8.1-9.0 s against 7.0-7.3 (every block
#: costs the writer thread the GIL twice more).
BLOCK_SIZE = 1 << 20

_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: Full blocks that may wait for the hashing thread. A big blob fills several at once.
#: Warm backup of 3 GB of big files, alternating: 7.11-7.40 s with 3 against 7.65-9.19
#: with 1, and 6 was no better; the peak memory of a backup of /usr did not move (158-163
#: MiB against 160-163).
_QUEUED = 3
#: Hashed blocks that may wait for the writing thread.
_HASHED = 1
#: How long the hashing thread waits for work before it ends (the writing thread with it).
_IDLE_SECONDS = 2.0


def enable_direct(fd: int) -> bool:
    """Turn O_DIRECT on for ``fd``; False where the system or file system refuses it."""
    if not _O_DIRECT:
        return False
    try:
        _set_direct(fd, True)
    except OSError:
        return False
    return True


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)


#: A full block to hash and write: its file, the block, and where it goes in the file.
_Job = tuple["DirectFile", mmap.mmap, int]


class BlockWriter:
    """The blocks of one backend's direct files, and the two threads that hash and write
    them.

    Two threads, not one: a block's hash (0.5 ms a MiB) and its write (0.6 ms a MiB on an
    idle machine, 1.7 with both cores busy) one after the other in one thread fell behind
    the blob threads of a backup, which then waited for room in the queue. One thread
    hashes each block in the order the blocks come, so each file's hash takes its blocks
    in order; the other writes them. Warm backup of 3 GB of big files, 8 pairs of runs:
    0.25 s faster than one thread in the median pair, faster in 6 of 8. Hashing in the
    thread that fills the block was as fast there (with the packer filling two packs at
    once, else it held the packer's lock), but 0.3 s slower on 100,000 small files, where
    that thread is the one taking every file from the encoders.

    Only the process that made it uses it: the backup's forked encoders seal blobs into
    shared memory and never write a pack, so a thread or lock lost in the fork is never
    waited for.

    Full blocks wait in a queue of :data:`_QUEUED`: a file that fills blocks faster than
    the disk and the hash take them then waits. Free blocks are kept for reuse
    (a new mapping would fault its pages in afresh), up to ``keep``; taking a block never
    waits, because a file may need one while the packer's lock is held."""

    def __init__(self, keep: int, size: int = BLOCK_SIZE) -> None:
        self.size = size
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job] = queue.Queue(_QUEUED)
        #: Guards the thread's start and end: a block is queued only with a thread alive.
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        # Private: a forked child (the backup's encoders) must not share our blocks.
        return mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE)

    def give(self, block: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(block)
                return
        # A view of it may live on (in an error's traceback): then it is unmapped when freed.
        with contextlib.suppress(BufferError):
            block.close()

    def drop_free(self) -> None:
        """Unmap the free blocks; blocks in use come back and are kept as before."""
        with self._lock:
            free, self._free = self._free, []
        for block in free:
            block.close()  # never exported: free blocks have no views

    def submit(self, file: DirectFile, block: mmap.mmap, offset: int) -> None:
        """Have ``block`` hashed into ``file`` and written at ``offset``; blocks of one
        file are hashed in the order they come."""
        with self._thread_lock:
            if self._thread is None:
                # Each pair of threads has its own queue between them: a pair that ends
                # drains it while the next pair may start.
                hashed: queue.Queue[_Job | None] = queue.Queue(_HASHED)
                hasher = threading.Thread(
                    target=self._hash_blocks, args=(hashed,), name="cairn-pack-hash", daemon=True
                )
                writer = threading.Thread(
                    target=self._write_blocks, args=(hashed,), name="cairn-pack-write", daemon=True
                )
                writer.start()
                try:
                    hasher.start()
                except BaseException:
                    hashed.put(None)
                    raise
                self._thread = hasher
            # Under the lock, so the thread cannot end between the check and the put.
            # While the queue is full the thread is busy, never waiting for this lock.
            self._queue.put((file, block, offset))

    def _hash_blocks(self, hashed: queue.Queue[_Job | None]) -> None:
        while True:
            try:
                job = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._thread_lock:
                    if self._queue.empty():
                        self._thread = None
                        hashed.put(None)  # the writing thread ends after what it has
                        return
                continue
            job[0].hash_block(job[1])
            hashed.put(job)

    def _write_blocks(self, hashed: queue.Queue[_Job | None]) -> None:
        while (job := hashed.get()) is not None:
            file, block, offset = job
            try:
                file.write_block(block, offset)
            finally:
                self.give(block)


class DirectFile:
    """An append-only file (new and empty, with O_DIRECT on) that writes through aligned
    blocks and keeps the SHA-256 of what it wrote.

    One caller at a time (the packer appends under its lock; then one uploader finishes
    the pack). :meth:`flush` writes the partial last block and cuts the file to its exact
    size; writing may go on after it. Should the file system refuse an aligned direct
    write after all, the file drops O_DIRECT and goes on through the page cache."""

    def __init__(self, fd: int, writer: BlockWriter) -> None:
        self._fd = fd
        self._writer = writer
        self._block: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._fill = 0  # bytes in the current block
        self._offset = 0  # where the current block starts in the file
        self._sha = hashlib.sha256()  # of the full blocks, updated by the hashing thread
        self._flushed_sha: bytes | None = None
        self._direct = True
        self._paused = False  # O_DIRECT is off since the last flush
        self._queued = 0  # blocks handed over and not yet written
        self._done = threading.Condition()
        self._error: BaseException | None = None
        self.closed = False

    # -- the file interface the packer and the backend use ----------------------------

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._raise_error()
        n = len(data)
        self._flushed_sha = None
        size = self._writer.size
        if self._view is not None and self._fill + n < size:
            # The common case, a blob that fits the current block.
            self._view[self._fill : self._fill + n] = data
            self._fill += n
            return n
        src = memoryview(data).cast("B")
        pos = 0
        while pos < n:
            view = self._view if self._view is not None else self._take_block()
            k = min(size - self._fill, n - pos)
            view[self._fill : self._fill + k] = src[pos : pos + k]
            self._fill += k
            pos += k
            if self._fill == size:
                self._hand_over()
        return n

    def flush(self) -> None:
        """Everything written so far is on disk (not yet synced) and the file is exactly
        that long; :meth:`sha256` is its hash."""
        if self.closed:
            return
        self._wait_written()
        self._raise_error()
        sha = self._sha.copy()
        if self._fill:
            view = self._view if self._view is not None else self._take_block()
            padded = -(-self._fill // ALIGN) * ALIGN
            self._pwrite(view[:padded], self._offset)
            sha.update(view[: self._fill])
            # The tail is on disk now: its block goes back (a finished pack waits for its
            # upload without holding one).
            self._release_block()
        os.ftruncate(self._fd, self._offset + self._fill)
        self._flushed_sha = sha.digest()
        if self._direct:
            # Whoever reads the file next (sendfile, mmap, a copy) reads it whole, at
            # offsets and lengths O_DIRECT would refuse. Back on for the next block.
            _set_direct(self._fd, False)
            self._paused = True

    def sha256(self) -> bytes:
        """SHA-256 of the file's content as of the last :meth:`flush`, when nothing was
        written after it."""
        if self._flushed_sha is None:
            raise ValueError("sha256() of a direct file needs a flush after the last write")
        return self._flushed_sha

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wait_written()  # the writer thread must be done with the descriptor
        if self._block is not None:
            self._release_block()
        os.close(self._fd)

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hashing and writing threads' side ----------------------------------------------

    def hash_block(self, block: mmap.mmap) -> None:
        """Add one full block to the file's hash (in the hashing thread, block after block
        in the order they come). An error is kept for the file's next call."""
        try:
            if self._error is None and not self.closed:
                with memoryview(block) as view:
                    self._sha.update(view)
        except BaseException as e:
            self._error = e

    def write_block(self, block: mmap.mmap, offset: int) -> None:
        """Write one full block, hashed already (in the writing thread). An error is kept
        for the file's next call; the blocks after it are not written."""
        try:
            if self._error is None and not self.closed:
                with memoryview(block) as view:
                    self._pwrite(view, offset)
        except BaseException as e:
            self._error = e
        finally:
            with self._done:
                self._queued -= 1
                self._done.notify_all()

    # -- internals -----------------------------------------------------------------------

    def _take_block(self) -> memoryview:
        self._block = self._writer.take()
        self._view = memoryview(self._block)
        if self._fill:
            # Written on after a flush: the partial block is in the file, not in memory.
            self._pread_into(self._view[: self._fill], self._offset)
        if self._paused:
            _set_direct(self._fd, True)
            self._paused = False
        return self._view

    def _release_block(self) -> None:
        assert self._block is not None and self._view is not None
        self._view.release()
        self._writer.give(self._block)
        self._block = self._view = None

    def _hand_over(self) -> None:
        """The current block is full: the backend's threads hash and write it."""
        assert self._block is not None and self._view is not None
        self._view.release()
        with self._done:
            self._queued += 1
        try:
            self._writer.submit(self, self._block, self._offset)
        except BaseException:
            # Not queued (no thread could start): a flush must not wait for it.
            with self._done:
                self._queued -= 1
            self._view = memoryview(self._block)
            raise
        self._block = self._view = None
        self._offset += self._writer.size
        self._fill = 0

    def _wait_written(self) -> None:
        with self._done:
            while self._queued:
                self._done.wait()

    def _pwrite(self, view: memoryview, offset: int) -> None:
        while view:
            try:
                n = os.pwrite(self._fd, view, offset)
            except OSError as e:
                if e.errno != errno.EINVAL or not self._direct:
                    raise
                # This file system takes O_DIRECT at open but not these writes.
                self._direct = False
                _set_direct(self._fd, False)
                continue
            view = view[n:]
            offset += n

    def _pread_into(self, view: memoryview, offset: int) -> None:
        """Read back the partial block a flush wrote (buffered: the flush turned O_DIRECT
        off, and the length is not aligned)."""
        got = os.preadv(self._fd, [view], offset)
        if got != len(view):
            raise OSError(errno.EIO, f"direct file ended {len(view) - got} bytes early")

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
