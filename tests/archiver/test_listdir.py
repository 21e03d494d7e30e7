"""_listdir.listing, the prefetch's directory listing in C: byte for byte what
dirsig.entry_signature makes of Python's own lstat, in Python's name order."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cairn.archiver._listdir import listing
from cairn.archiver.dirsig import entry_signature


def _python_listing(path: bytes) -> tuple[bytes, int, list[tuple[bytes, int]]]:
    names = sorted(os.listdir(path))
    stats = [(n, os.lstat(os.path.join(path, n))) for n in names]
    entries = b"".join(entry_signature(n, st) for n, st in stats)
    subdirs = [(n, st.st_dev) for n, st in stats if stat.S_ISDIR(st.st_mode)]
    return entries, len(names), subdirs


def test_every_kind_of_entry_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    # Byte order, not text order: upper case first, a prefix before its extensions,
    # bytes above 0x7f (not UTF-8) last.
    for name in [b"b", b"B", b"a", b"ab", b"a\xff", b"\xe9t\xe9", b"a-b", b"a b"]:
        (d / os.fsdecode(name)).write_bytes(name)
    for i in range(150):  # more than the first allocation
        (d / f"many-{i:03d}").write_bytes(b"x" * i)
    (d / "sub").mkdir()
    (d / "sub2").mkdir()
    (d / "link-to-sub").symlink_to("sub")  # a link: not a subdirectory to visit
    (d / "dangling").symlink_to("nowhere")
    os.mkfifo(d / "fifo")
    sparse = d / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(5 << 30)  # a size beyond 32 bits
    os.utime(d / "b", ns=(1, -1_234_567_891))  # before 1970: a negative time
    os.utime(d / "a", ns=(1, 1_700_000_000_123_456_789))
    os.link(d / "ab", d / "ab-hard")

    path = os.fsencode(d)
    entries, count, subdirs, complete = listing(path)
    assert complete
    assert (entries, count, subdirs) == _python_listing(path)
    assert [name for name, _ in subdirs] == [b"sub", b"sub2"]


def test_an_empty_directory(tmp_path: Path) -> None:
    assert listing(os.fsencode(tmp_path)) == (b"", 0, [], True)


def test_what_cannot_be_listed_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        listing(os.fsencode(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        listing(os.fsencode(tmp_path / "file"))
