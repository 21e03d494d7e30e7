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


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def trim() -> None:
    """Return the free memory at the top and inside the heap to the kernel (glibc)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
