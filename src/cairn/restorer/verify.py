"""``restore --verify``: re-read restored files and compare each chunk with its blob ID.

Each file is read in pieces of its content blobs' plaintext lengths (from the index) into a
reused per-thread buffer; SHA-256 releases the GIL on large inputs, so several files are
checked in parallel. Memory is one buffer of the largest chunk (8 MiB) per thread.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cairn.repo.ids import BlobType
from cairn.restorer.plan import FileTable
from cairn.restorer.progress import ProgressTracker

if TYPE_CHECKING:
    from cairn.repo.repository import Repository

_local = threading.local()


def _buffer(size: int) -> memoryview:
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = bytearray(max(size, 8 * 1024 * 1024))
    return memoryview(buf)[:size]


def verify_file(repo: Repository, path: bytes, content: Sequence[bytes]) -> str | None:
    """None when ``path`` holds exactly the blobs ``content``, in order, else why not."""
    name = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        return f"{name}: cannot open for verification: {e.strerror}"
    try:
        offset = 0
        for bid in content:
            pb = repo.index.lookup(BlobType.DATA, bid)
            if pb is None:
                return f"{name}: data blob {bid.hex()[:16]} is not in the index"
            view = _buffer(pb.plaintext_length)
            got = 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], offset + got)
                if n == 0:
                    break
                got += n
            if got != len(view) or hashlib.sha256(view).digest() != bid:
                return f"{name}: content differs from the snapshot at offset {offset}"
            offset += len(view)
        size = os.fstat(fd).st_size
        if size != offset:
            return f"{name}: size is {size}, expected {offset}"
    except OSError as e:
        return f"{name}: cannot read for verification: {e.strerror}"
    finally:
        os.close(fd)
    return None


def verify_files(
    repo: Repository,
    root: bytes,
    table: FileTable,
    numbers: Sequence[int],
    tracker: ProgressTracker | None = None,
    workers: int = 4,
) -> list[str]:
    """Verify the files ``numbers`` of ``table`` under ``root`` in parallel; returns the
    mismatch messages (empty when all match)."""

    def one(f: int) -> str | None:
        result = verify_file(repo, root + b"/" + table.paths[f], table.content(f))
        if tracker is not None:
            tracker.add(files=1, nbytes=table.sizes[f])
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cairn-verify") as ex:
        return [msg for msg in ex.map(one, numbers) if msg is not None]
