"""zstd into a caller's buffer (repo/compression.py): the frame it writes decodes to the
input, small inputs (one-shot) and large ones (streamed) alike, and it never writes past
the room zstd's bound promises."""

from __future__ import annotations

import random

import pytest

from cairn.repo.compression import compress_bound, compress_into, decompress


@pytest.mark.parametrize("size", [1, 4096, (128 << 10) - 1, 128 << 10, (2 << 20) + 17])
@pytest.mark.parametrize("kind", ["random", "text"])
def test_compress_into_writes_one_frame_of_the_input(size: int, kind: str) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size) if kind == "random" else (b"a line of text %d\n" * size)[:size]
    room = compress_bound(size)
    out = bytearray(room + 64)
    out[room:] = b"\xee" * 64  # a guard past the bound
    n = compress_into(data, memoryview(out)[:room])
    assert 0 < n <= room and out[room:] == b"\xee" * 64
    assert decompress(bytes(out[:n]), size) == data


def test_compress_into_refuses_a_buffer_below_the_bound() -> None:
    with pytest.raises(ValueError, match="compress_bound"):
        compress_into(b"x" * 1000, memoryview(bytearray(compress_bound(1000) - 1)))
