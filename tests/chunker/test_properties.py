"""Property tests: the C chunker (small sizes, every lane layout) against the pure-Python
references in reference.py, and streaming against one whole buffer."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.chunker import MAX_SIZE, Chunker
from cairn.chunker._rabin import Rabin
from tests.chunker import reference

POLYNOMIALS = [0x364DB5C33BE699, 0x347E3B154B5D79, 0x3DA3358B4DC173, 0x25B468838DCB75]
# Irreducible polynomials of other degrees (restic only makes degree 53, but accepts any
# irreducible one): the C code's generic path.
OTHER_DEGREES = [0x217, 0x8000000F, 0x100000000000095]


@dataclass(frozen=True)
class Params:
    polynomial: int
    min_size: int
    max_size: int
    mask_bits: int
    segment: int

    def chunker(self) -> Chunker:
        return Chunker(
            self.polynomial,
            min_size=self.min_size,
            max_size=self.max_size,
            mask_bits=self.mask_bits,
            _segment=self.segment,
        )


@st.composite
def params(draw: st.DrawFn) -> Params:
    min_size = draw(st.integers(64, 200))
    return Params(
        polynomial=draw(st.sampled_from(POLYNOMIALS + OTHER_DEGREES)),
        min_size=min_size,
        max_size=min_size + draw(st.integers(0, 700)),
        mask_bits=draw(st.integers(1, 8)),
        # 1 = every position is its own lane; 16384 = the production layout.
        segment=draw(st.sampled_from([1, 2, 3, 5, 64, 127, 200, 16384])),
    )


# Random bytes find cuts quickly; zero runs and short periods exercise the max_size cut
# and windows whose fingerprint is 0.
_piece = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.integers(1, 900).map(bytes),
    st.tuples(st.binary(min_size=1, max_size=5), st.integers(1, 300)).map(lambda t: t[0] * t[1]),
)
data_strategy = st.lists(_piece, max_size=6).map(b"".join)


def _lengths(chunker: Chunker, data: bytes) -> list[int]:
    return [n for _, n in chunker.boundaries(data)]


@settings(max_examples=150, deadline=None)
@given(p=params(), data=data_strategy)
def test_c_chunker_equals_definition(p: Params, data: bytes) -> None:
    expected = reference.cut_lengths(data, p.polynomial, p.min_size, p.max_size, p.mask_bits)
    assert _lengths(p.chunker(), data) == expected


@settings(max_examples=150, deadline=None)
@given(p=params(), data=data_strategy)
def test_c_chunker_equals_restic_rolling_loop(p: Params, data: bytes) -> None:
    expected = reference.restic_loop_lengths(
        data, p.polynomial, p.min_size, p.max_size, p.mask_bits
    )
    assert _lengths(p.chunker(), data) == expected


class _ShortReads(io.RawIOBase):
    """A pipe-like source: each readinto returns at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@settings(max_examples=150, deadline=None)
@given(
    p=params(),
    data=data_strategy,
    extra=st.integers(0, 2000),
    step=st.integers(1, 3000),
)
def test_streaming_in_odd_buffer_sizes_equals_whole_buffer(
    p: Params, data: bytes, extra: int, step: int
) -> None:
    chunker = p.chunker()
    whole = list(chunker.boundaries(data))
    for source in (io.BytesIO(data), _ShortReads(data, step)):
        streamed = []
        offset = 0
        for chunk in chunker.chunks(source, buffer_size=p.max_size + extra):
            streamed.append((offset, len(chunk), bytes(chunk)))
            offset += len(chunk)
        assert [(o, n) for o, n, _ in streamed] == whole
        assert b"".join(c for _, _, c in streamed) == data


@settings(max_examples=100, deadline=None)
@given(p=params(), data=data_strategy, split=st.integers(0, 5000))
def test_find_cut_minus_one_means_undecided(p: Params, data: bytes, split: int) -> None:
    """An answer given without eof never changes when more data arrives."""
    chunker = p.chunker()
    whole = chunker.find_cut(data, 0, len(data), True)
    end = min(split, len(data))
    partial = chunker.find_cut(data, 0, end, False)
    if partial == -1:
        assert end - 0 < p.max_size
    else:
        assert partial == whole


def test_find_cut_edges() -> None:
    chunker = Chunker(POLYNOMIALS[0], min_size=64, max_size=100, mask_bits=20)
    periodic = b"ab" * 200  # no cut with 20 mask bits (checked by the reference below)
    assert reference.cut_lengths(periodic, POLYNOMIALS[0], 64, 100, 20)[0] == 100
    assert chunker.find_cut(b"", 0, 0, True) == 0
    assert chunker.find_cut(b"", 0, 0, False) == -1
    assert chunker.find_cut(periodic, 0, 63, False) == -1
    assert chunker.find_cut(periodic, 0, 63, True) == 63
    assert chunker.find_cut(periodic, 0, 99, False) == -1
    assert chunker.find_cut(periodic, 0, 99, True) == 99
    assert chunker.find_cut(periodic, 0, 100, False) == 100
    assert chunker.find_cut(periodic, 5) == 100
    assert chunker.find_cut(bytes(64), 0, 64, False) == 64  # zero window: cut at min_size
    assert chunker.find_cut(memoryview(bytearray(periodic)), 300, None, True) == 100
    with pytest.raises(ValueError):
        chunker.find_cut(periodic, 10, 5, True)
    with pytest.raises(ValueError):
        chunker.find_cut(periodic, 0, len(periodic) + 1, True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 63, "max_size": 100},
        {"min_size": 100, "max_size": 99},
        {"mask_bits": 0},
        {"mask_bits": 54},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Chunker(POLYNOMIALS[0], **kwargs)


@pytest.mark.parametrize("polynomial", [0x1FF, 1 << 57 | 1])
def test_polynomial_degree_out_of_range_is_rejected(polynomial: int) -> None:
    with pytest.raises(ValueError):
        Chunker(polynomial)


@pytest.mark.parametrize("polynomial", POLYNOMIALS + OTHER_DEGREES)
def test_tables_match_their_definition(polynomial: int) -> None:
    out_table, mod_table = Rabin(polynomial, mask_bits=8).tables()
    expected_out, expected_mod = reference.restic_tables(polynomial)
    assert list(out_table) == expected_out
    assert list(mod_table) == expected_mod


def test_lane_layouts_agree_on_large_random_data() -> None:
    """Production sizes: the 4-lane scan with odd segment lengths finds the same cuts."""
    data = os.urandom(40 * 1024 * 1024)
    expected = list(Chunker(POLYNOMIALS[0]).boundaries(data))
    assert len(expected) > 10
    for segment in (129, 1000, 1 << 30):
        assert list(Chunker(POLYNOMIALS[0], _segment=segment).boundaries(data)) == expected
    # One lane per position: every window hashed from scratch (slow; a prefix suffices).
    prefix = data[: 6 * 1024 * 1024]
    assert list(Chunker(POLYNOMIALS[0], _segment=1).boundaries(prefix)) == list(
        Chunker(POLYNOMIALS[0]).boundaries(prefix)
    )


def test_pipe_fd_and_empty_sources(tmp_path: os.PathLike[str]) -> None:
    chunker = Chunker(POLYNOMIALS[1])
    data = os.urandom(5 * MAX_SIZE // 2)
    expected = [bytes(data[o : o + n]) for o, n in chunker.boundaries(data)]
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        got = [bytes(c) for c in chunker.chunks(read_fd, buffer_size=MAX_SIZE + 12345)]
    finally:
        writer.join()
        os.close(read_fd)
    assert got == expected

    empty = os.path.join(tmp_path, "empty")
    with open(empty, "wb"):
        pass
    with open(empty, "rb") as f:
        assert list(chunker.chunks(f)) == []
    assert list(chunker.chunks(io.BytesIO(b""))) == []
    with pytest.raises(ValueError):
        list(chunker.chunks(io.BytesIO(b"x"), buffer_size=MAX_SIZE - 1))


def test_file_that_grows_after_its_size_was_taken(tmp_path: os.PathLike[str]) -> None:
    """The buffer sized from fstat is enlarged when the file turns out longer."""

    class Growing(io.BytesIO):
        """Reads more than fstat of its fileno() promised (1000 bytes)."""

        def __init__(self, data: bytes, fd: int) -> None:
            super().__init__(data)
            self._fd = fd

        def fileno(self) -> int:
            return self._fd

    chunker = Chunker(POLYNOMIALS[0])
    path = os.path.join(tmp_path, "small")
    with open(path, "wb") as w:
        w.write(bytes(1000))
    data = os.urandom(3 * MAX_SIZE)
    with open(path, "rb") as f:
        got = [bytes(c) for c in chunker.chunks(Growing(data, f.fileno()))]
    assert got == [data[o : o + n] for o, n in chunker.boundaries(data)]
