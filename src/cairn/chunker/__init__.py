"""restic-compatible content-defined chunking (spec §13).

The scan runs in the C extension :mod:`cairn.chunker._rabin`, which releases the GIL, so
several threads can chunk different files in parallel.

Typical use::

    chunker = Chunker(config_polynomial)
    with open(path, "rb") as f:
        for chunk in chunker.chunks(f):
            blob_id = hashlib.sha256(chunk).digest()   # chunk is only valid until next()
"""

from __future__ import annotations

import io
import mmap
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO, Protocol, cast

from cairn.chunker._rabin import Rabin

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "MASK_BITS",
    "MAX_SIZE",
    "MIN_SIZE",
    "WINDOW_SIZE",
    "BytesLike",
    "Chunker",
    "Source",
    "SupportsReadInto",
]

#: restic's chunk size limits and split mask (spec §13.1).
MIN_SIZE = 512 * 1024
MAX_SIZE = 8 * 1024 * 1024
MASK_BITS = 20
WINDOW_SIZE = 64

#: Read buffer of :meth:`Chunker.chunks`: the maximum chunk plus 2 MiB. A refill moves only
#: the undecided tail (shorter than the chunk being cut, ~1 MiB on average), so a bigger
#: buffer saves no CPU (measured: the same CPU time at 9, 10 and 16 MiB) but costs memory
#: in every reader thread.
DEFAULT_BUFFER_SIZE = MAX_SIZE + 2 * 1024 * 1024

BytesLike = bytes | bytearray | memoryview


class SupportsReadInto(Protocol):
    """Any binary file object (``open(path, "rb")``, ``io.BytesIO``, a raw ``FileIO``)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


#: What :meth:`Chunker.chunks` reads: a binary file object or a raw file descriptor.
Source = BinaryIO | SupportsReadInto | int


class _ReadIntoFunc(Protocol):
    def __call__(self, view: memoryview, /) -> int | None: ...


class Chunker:
    """Cuts byte streams exactly where restic does for ``polynomial``.

    ``min_size``, ``max_size`` and ``mask_bits`` default to restic's values; other values
    exist for tests (``min_size`` must be at least the 64-byte window). ``_segment`` tunes the
    length of the C scanner's independent lanes and is for tests only.
    """

    def __init__(
        self,
        polynomial: int,
        *,
        min_size: int = MIN_SIZE,
        max_size: int = MAX_SIZE,
        mask_bits: int = MASK_BITS,
        _segment: int | None = None,
    ) -> None:
        if _segment is None:
            self._rabin = Rabin(polynomial, min_size, max_size, mask_bits)
        else:
            self._rabin = Rabin(polynomial, min_size, max_size, mask_bits, _segment)

    @property
    def polynomial(self) -> int:
        return self._rabin.polynomial

    @property
    def min_size(self) -> int:
        return self._rabin.min_size

    @property
    def max_size(self) -> int:
        return self._rabin.max_size

    def find_cut(
        self, buf: BytesLike, start: int = 0, end: int | None = None, eof: bool = False
    ) -> int:
        """Length of the chunk starting at ``buf[start]``, looking only at ``buf[start:end]``.

        Returns -1 when that data cannot decide (no cut found, fewer than ``max_size`` bytes
        available and not ``eof``): call again with more data. With ``eof`` the rest of the
        data is the last chunk; 0 means nothing is left (``start == end``).
        """
        return self._rabin.find_cut(buf, start, len(buf) if end is None else end, eof)

    def boundaries(self, data: BytesLike) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` of every chunk of ``data``, which holds a whole file."""
        find_cut = self._rabin.find_cut
        start, end = 0, len(data)
        while (n := find_cut(data, start, end, True)) > 0:
            yield start, n
            start += n

    def chunks(
        self,
        source: Source,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        buffer: bytearray | mmap.mmap | None = None,
    ) -> Iterator[memoryview]:
        """Read ``source`` (a binary file object or a file descriptor) to its end, yielding
        each chunk in order; an empty file yields nothing.

        The file is read with ``readinto`` into one reused buffer of at most ``buffer_size``
        bytes (at least ``max_size``), never whole. **Each yielded view is valid only until the
        next iteration**; a caller that keeps a chunk must copy it (``bytes(chunk)``).

        ``buffer`` (writable, at least ``max_size`` bytes) is used instead of a new one: a
        thread that chunks file after file keeps one rather than allocating ~10 MiB a file.
        """
        if buffer_size < self.max_size or (buffer is not None and len(buffer) < self.max_size):
            raise ValueError("the buffer must hold at least max_size bytes")
        read = _reader(source)
        hint = _size_hint(source)
        buf: bytearray | mmap.mmap
        if buffer is not None:
            buf = buffer
        else:
            # A small file needs a small buffer; a file that grows while read enlarges it.
            buf = bytearray(buffer_size if hint is None else min(buffer_size, hint + 1))
        view = memoryview(buf)
        find_cut = self._rabin.find_cut
        start = end = 0
        eof = False
        while True:
            # Fill the whole buffer before scanning: scanning after every short read (pipes)
            # would rescan the pending bytes again and again.
            while end < len(buf) and not eof:
                got = read(view[end:])
                if got is None:
                    raise BlockingIOError("non-blocking source has no data")
                if got == 0:
                    eof = True
                end += got
            while (n := find_cut(view, start, end, eof)) > 0:
                yield view[start : start + n]
                start += n
            if n == 0:
                return
            # Undecided: keep the pending tail, move it to the front and read on.
            pending = end - start
            if pending == len(buf):
                # Only when the size hint was too small (the file grew): a buffer of
                # buffer_size >= max_size bytes always decides.
                grown = bytearray(buffer_size)
                grown[:pending] = buf
                buf, view = grown, memoryview(grown)
            elif start:
                view[:pending] = view[start:end]
            start, end = 0, pending


def _reader(source: Source) -> _ReadIntoFunc:
    """A ``readinto`` function for a file object or a raw file descriptor."""
    if isinstance(source, int):
        fd = source
        return lambda view: os.readv(fd, [view])
    # typing.BinaryIO does not declare readinto, though every io class has it.
    readinto = getattr(source, "readinto", None)
    if readinto is None:
        raise TypeError("chunks() needs a binary file object with readinto() or a file descriptor")
    return cast(_ReadIntoFunc, readinto)


def _size_hint(source: Source) -> int | None:
    """Bytes left in a regular file, or None when unknown (pipes, sockets, BytesIO)."""
    try:
        if isinstance(source, int):
            fd, pos = source, os.lseek(source, 0, os.SEEK_CUR)
        else:
            fileno = getattr(source, "fileno", None)
            tell = getattr(source, "tell", None)
            if fileno is None or tell is None:
                return None
            fd, pos = fileno(), tell()
        st = os.fstat(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return max(st.st_size - pos, 0)
