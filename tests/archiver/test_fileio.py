"""read_small: a file read whole in one call when fstat's size is right, and every other
case (grown, shrunk, past the limit) still read correctly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.archiver.fileio import read_small


@pytest.mark.parametrize(
    ("actual", "expected", "result"),
    [
        (0, 0, 0),
        (5, 5, 5),
        (10, 10, 10),  # exactly the limit
        (11, 11, None),  # past it
        (7, 5, 7),  # grew after fstat
        (11, 5, None),  # grew past the limit
        (3, 5, 3),  # shrank after fstat
    ],
)
def test_read_small(tmp_path: Path, actual: int, expected: int, result: int | None) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(actual))
    fd = os.open(path, os.O_RDONLY)
    try:
        got = read_small(fd, expected, 10)
    finally:
        os.close(fd)
    assert got == (None if result is None else path.read_bytes())
