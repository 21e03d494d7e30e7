"""zstd for blobs and JSON files, restic-compatible (spec §6.1).

One compressor object per thread and level: a fresh context per call costs up to 4x on
incompressible data. Frames are written without checksum; reading uses a streaming
decompressor because restic's encoder omits the content size for small inputs.
"""

from __future__ import annotations

import sys
import threading

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

#: restic's --compression modes mapped to zstd levels (klauspost "default" ~ 3, "best" ~ 11).
LEVELS = {"fastest": 1, "auto": 3, "better": 7, "max": 11}

_local = threading.local()


def compress(data: bytes | bytearray | memoryview, level: int = 3) -> bytes:
    """One zstd frame of ``data`` (no checksum)."""
    comps: dict[int, zstd.ZstdCompressor] | None = getattr(_local, "comps", None)
    if comps is None:
        comps = _local.comps = {}
    comp = comps.get(level)
    if comp is None:
        comp = comps[level] = zstd.ZstdCompressor(
            options={zstd.CompressionParameter.compression_level: level,
                     zstd.CompressionParameter.checksum_flag: 0}
        )
    out: bytes = comp.compress(data, mode=zstd.ZstdCompressor.FLUSH_FRAME)
    return out


def decompress(data: bytes | bytearray | memoryview, expected_size: int | None = None) -> bytes:
    """Decompress exactly one frame; checks the size when it is known."""
    try:
        d = zstd.ZstdDecompressor()
        out: bytes = d.decompress(data)
        if not d.eof:
            raise ValueError("truncated zstd frame")
        if d.unused_data:
            raise ValueError("data after the zstd frame")
    except (zstd.ZstdError, ValueError) as e:
        from cairn.errors import FormatError

        raise FormatError(f"cannot decompress: {e}") from e
    if expected_size is not None and len(out) != expected_size:
        from cairn.errors import FormatError

        raise FormatError(f"decompressed {len(out)} bytes, expected {expected_size}")
    return out
