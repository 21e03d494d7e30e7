"""Opening and reading the files a backup stores, the same way in threads and in forked
encoders (archiver/encoders.py)."""

from __future__ import annotations

import os


def read_small(fd: int, expected: int, limit: int) -> bytes | None:
    """The whole file if it ends within ``limit`` bytes, else None (it is longer).

    The first read asks for one byte more than the ``expected`` size that fstat reported:
    getting exactly ``expected`` is taken as the end of the file (a file that grew since
    would have returned more), which saves a second read, and a GIL hand-off, per small
    file. Asking for ``limit`` bytes instead had every read allocate (and the kernel zero)
    a buffer of the minimum chunk size, 512 KiB, for files of a few KiB."""
    data = os.read(fd, min(expected, limit) + 1)
    if len(data) == expected <= limit:
        return data
    parts = [data]
    total = len(data)
    while data:  # it grew, or a short read (network filesystems): read on to the end
        if total > limit:
            return None
        data = os.read(fd, limit + 1 - total)
        total += len(data)
        parts.append(data)
    return None if total > limit else b"".join(parts)


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
