"""Opening and reading the files a backup stores, the same way in threads and in forked
encoders (archiver/encoders.py)."""

from __future__ import annotations

import os


def read_small(fd: int, expected: int, limit: int) -> bytes | None:
    """The whole file if it ends within ``limit`` bytes, else None (it is longer).

    A read that returns exactly the ``expected`` size that fstat reported is taken as the
    end of the file (a file that grew since would have returned more), which saves a
    second read, and a GIL hand-off, per small file."""
    data = os.read(fd, limit + 1)
    if len(data) > limit:
        return None
    if len(data) == expected:
        return data
    parts = [data]
    total = len(data)
    while data:  # a short read (network filesystems): read on to the end
        data = os.read(fd, limit + 1 - total)
        total += len(data)
        if total > limit:
            return None
        parts.append(data)
    return b"".join(parts)


def open_regular(path: bytes) -> int:
    """Open for reading without following symlinks, without blocking on a FIFO that
    replaced the file, and without updating atime where the kernel allows it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership (or root)
    return os.open(path, flags)
