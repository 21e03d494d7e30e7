"""Type stub for the C extension ``cairn.chunker._rabin`` (see _rabin.c)."""

from typing import final

@final
class Rabin:
    """restic's chunker tables for one polynomial; ``find_cut`` releases the GIL."""

    def __init__(
        self,
        polynomial: int,
        min_size: int = ...,
        max_size: int = ...,
        mask_bits: int = ...,
        segment: int = ...,
    ) -> None: ...
    @property
    def polynomial(self) -> int: ...
    @property
    def min_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def mask(self) -> int: ...
    def find_cut(
        self, buffer: bytes | bytearray | memoryview, start: int, end: int, eof: bool, /
    ) -> int: ...
    def fingerprint(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def tables(self) -> tuple[tuple[int, ...], tuple[int, ...]]: ...
