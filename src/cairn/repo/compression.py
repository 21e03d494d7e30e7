"""zstd for blobs and JSON files, restic-compatible (spec §6.1).

Built on ``zstandard`` (python-zstandard), whose contexts are reusable and which releases
the GIL for all of its work, input and output alike. Contexts are reused: compressors from
a pool shared by the threads, one decompressor per thread (they are small). A fresh context
per call costs up to 4x on incompressible data and dominated the restore of small blobs
(9-13 µs per blob against 0.4-4 µs reused). Frames are written without checksum, as
restic writes them; frames from restic's encoder may omit the content size, so decoding
is always bounded by the size the index records.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import zstandard

from cairn.errors import FormatError

#: restic's --compression modes mapped to zstd levels (klauspost "default" ~ 3, "best" ~ 11).
LEVELS = {"fastest": 1, "auto": 3, "better": 7, "max": 11}

_local = threading.local()

#: Compressors not in use, by level, shared by every thread. A level-3 context holds
#: ~3.5 MiB; one per thread (a backup compresses in eight: blob workers, readers, tree
#: savers, the uploader writing index files) held more than the two or three ever busy
#: at once.
_idle: dict[int, list[zstandard.ZstdCompressor]] = {}
_idle_lock = threading.Lock()


def _forget_idle_after_fork() -> None:
    # The lock may have been held by a thread that does not exist in the child.
    global _idle_lock
    _idle_lock = threading.Lock()
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_idle_after_fork)


def _take_compressor(level: int) -> zstandard.ZstdCompressor:
    """An idle compressor of ``level`` (the one used last: its memory is warm), or a new
    one; give it back with :func:`_give_back`."""
    with _idle_lock:
        idle = _idle.get(level)
        if idle:
            return idle.pop()
    return zstandard.ZstdCompressor(level=level, write_checksum=False)


def _give_back(level: int, comp: zstandard.ZstdCompressor) -> None:
    with _idle_lock:
        _idle.setdefault(level, []).append(comp)


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compress(data: bytes | bytearray | memoryview, level: int = 3) -> bytes:
    """One zstd frame of ``data`` (no checksum)."""
    comp = _take_compressor(level)
    try:
        out: bytes = comp.compress(data)
    finally:
        _give_back(level, comp)
    return out


def compress_bound(n: int) -> int:
    """zstd's worst case for ``n`` bytes of input (ZSTD_COMPRESSBOUND), frame included."""
    return n + (n >> 8) + ((((128 << 10) - n) >> 11) if n < (128 << 10) else 0)


def compress_into(data: bytes | bytearray | memoryview, out: memoryview, level: int = 3) -> int:
    """One zstd frame of ``data`` (no checksum) written to ``out``, which must hold
    :func:`compress_bound` bytes; returns its length. Measured on 2 MiB pieces of
    /usr/lib: 12% faster than :func:`compress` (no output buffer to allocate and fault
    in), frames 0.04% larger (zstd's streaming path cuts blocks a little differently)."""
    n = len(data)
    if len(out) < compress_bound(n):
        raise ValueError("compress_into needs compress_bound(len(data)) bytes of room")
    comp = _take_compressor(level)
    try:
        if n < _STREAM_FROM:
            # A small frame is quicker made whole and copied (1.2 against 2.5 µs at 4 KiB).
            frame = comp.compress(data)
            out[: len(frame)] = frame
            return len(frame)
        done = 0
        with comp.stream_reader(data, size=n, read_size=n) as reader:
            while got := reader.readinto(out[done:]):
                done += got
        return done
    finally:
        _give_back(level, comp)


#: Input size from which :func:`compress_into` streams into the caller's buffer.
_STREAM_FROM = 128 << 10


def compress_parts(parts: Iterable[bytes], level: int = 3, prefix: bytes = b"") -> bytearray:
    """``prefix`` followed by one zstd frame of the parts joined, compressed as they come
    (no checksum, no content size in the frame header, which restic's decoder does not
    need): the plaintext is never whole in memory."""
    out = bytearray(prefix)
    comp = _take_compressor(level)
    try:
        cobj = comp.compressobj()
        for part in parts:
            out += cobj.compress(part)
        out += cobj.flush()
    finally:
        _give_back(level, comp)
    return out


def decompress(data: bytes | bytearray | memoryview, expected_size: int | None = None) -> bytes:
    """Decompress exactly one frame; with ``expected_size`` (a blob's size from the index)
    the output must be exactly that long."""
    try:
        if expected_size is not None:
            out: bytes = _decompressor().decompress(
                data, max_output_size=expected_size, allow_extra_data=False
            )
        else:
            out = _decompress_unsized(data)
    except zstandard.ZstdError as e:
        raise FormatError(f"cannot decompress: {e}") from e
    if expected_size is not None and len(out) != expected_size:
        raise FormatError(f"decompressed {len(out)} bytes, expected {expected_size}")
    return out


def decompress_into(data: bytes | bytearray | memoryview, out: bytearray, size: int) -> int:
    """Decompress exactly one frame of ``size`` bytes into ``out`` (at least ``size + 1``
    long, to see a frame that is longer); returns the length. With room for the whole
    frame zstd decodes it in one pass, as fast as :func:`decompress`, without a new
    buffer: big blobs read one after another reuse ``out`` instead of leaving the heap
    with free holes of every size."""
    if len(out) <= size:
        raise ValueError("decompress_into needs room for one byte past the expected size")
    view = memoryview(out)
    n = 0
    try:
        # across frames: a second frame is more output than ``size``, caught below
        with _decompressor().stream_reader(data, read_across_frames=True) as reader:
            while n <= size:
                got = reader.readinto(view[n:])
                if not got:
                    break
                n += got
    except zstandard.ZstdError as e:
        raise FormatError(f"cannot decompress: {e}") from e
    finally:
        view.release()
    if n != size:
        told = f"more than {size}" if n > size else str(n)
        raise FormatError(f"decompressed {told} bytes, expected {size}")
    return n


def _decompress_unsized(data: bytes | bytearray | memoryview) -> bytes:
    """A frame of unknown size (JSON files): stream it, then insist on exactly one frame."""
    obj = _decompressor().decompressobj()
    out: bytes = obj.decompress(data)
    if not obj.eof:
        raise FormatError("cannot decompress: truncated zstd frame")
    if obj.unused_data:
        raise FormatError("cannot decompress: data after the zstd frame")
    return out
