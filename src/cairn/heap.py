"""Give freed heap memory back to the kernel after a phase that churns through a lot.

The CLI raises glibc's trim threshold to 64 MiB (``cli.main._tune_malloc``) so that
the multi-MiB buffers of a backup are reused rather than mapped afresh each time. The
price is that memory freed after a phase of many short-lived objects (decoding the
index: ~6x its text in JSON objects at once) stays in the process until something
reuses it; :func:`trim` returns it at once (measured: a 100,000-blob index, RSS 89 ->
51 MB right after loading it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc or not
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    return libc


def trim() -> None:
    """Return the free memory at the top and inside the heap to the kernel (glibc)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def free_bytes() -> int:
    """Bytes the heap holds free (glibc >= 2.33; 0 where that is unknown)."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return 0
    fn.restype = _MallInfo2
    return int(fn().fordblks)


def trim_above(limit: int) -> None:
    """:func:`trim` when the heap holds more than ``limit`` bytes free: a worker whose
    buffers vary in size keeps growing its heap otherwise, while one that reuses buffers
    of the same sizes would only pay to fault the pages in again."""
    if free_bytes() > limit:
        trim()
