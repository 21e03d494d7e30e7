"""The scanner behind the progress display's totals: the C count (no exclude rules) and
the Python walk (rules) agree with each other and with the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.archiver._treecount import count
from cairn.archiver.scanner import Scanner
from cairn.archiver.select import ExcludeOptions, Selector
from cairn.archiver.targets import build_layout


def _tree(root: Path) -> tuple[int, int, int]:
    """A tree with files, nested and empty directories, symbolic links (to a file and to a
    directory, never followed) and a FIFO; returns its (files, dirs, bytes)."""
    files = dirs = nbytes = 0
    for d in ("a/b/c", "a/empty", "d"):
        (root / d).mkdir(parents=True)
    for i, rel in enumerate(["top", "a/x", "a/b/y", "a/b/c/z", "d/w"]):
        (root / rel).write_bytes(b"." * (1000 * i + 7))
        files += 1
        nbytes += 1000 * i + 7
    os.symlink("top", root / "link-to-file")
    os.symlink("a", root / "link-to-dir")
    os.mkfifo(root / "fifo")
    dirs = 1 + 5  # the root itself, a, a/b, a/b/c, a/empty, d
    return files, dirs, nbytes


def _scan(targets: list[str], opts: ExcludeOptions, cwd: Path) -> Scanner:
    scanner = Scanner(build_layout(targets, str(cwd)), Selector(opts)).start()
    assert scanner.done.wait(10)
    return scanner


def test_c_count_matches_the_tree(tmp_path: Path) -> None:
    want = _tree(tmp_path)
    assert count(os.fsencode(tmp_path), bytearray(1)) == (*want, True)
    # a file as the root, and a path that is not there
    assert count(os.fsencode(tmp_path / "top"), bytearray(1)) == (1, 0, 7, True)
    assert count(os.fsencode(tmp_path / "missing"), bytearray(1))[3] is False


def test_c_count_stops_when_asked(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert count(os.fsencode(tmp_path), bytearray(b"\x01")) == (0, 0, 0, False)
    with pytest.raises(ValueError):
        count(os.fsencode(tmp_path), bytearray())


@pytest.mark.parametrize(
    "opts",
    [ExcludeOptions(), ExcludeOptions(exclude=["*.nothing-has-this"])],
    ids=["no rules (C)", "a rule that excludes nothing (Python)"],
)
def test_scanner_totals_with_and_without_rules(tmp_path: Path, opts: ExcludeOptions) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files, dirs, nbytes = _tree(src)
    assert Selector(opts).has_rules == bool(opts.exclude)
    one = _scan(["."], opts, src)
    assert (one.files, one.dirs, one.bytes) == (files, dirs, nbytes)
    # two targets side by side, one of them a single file
    two = _scan([str(src / "a"), str(src / "top")], opts, tmp_path)
    assert (two.files, two.dirs, two.bytes) == (4, 4, 7 + 1007 + 2007 + 3007)


def test_rules_still_exclude(tmp_path: Path) -> None:
    _tree(tmp_path)
    scanner = _scan(["."], ExcludeOptions(exclude=["b"]), tmp_path)
    assert (scanner.files, scanner.dirs) == (3, 4)  # a/b and all below it left out
    assert scanner.bytes == 7 + 1007 + 4007
