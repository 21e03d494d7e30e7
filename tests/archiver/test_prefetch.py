"""MetadataPrefetch: parallel listing of the targets' directories before the walk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.archiver import prefetch as prefetch_module
from cairn.archiver.dirsig import directory_signature, entry_signature
from cairn.archiver.prefetch import MetadataPrefetch
from cairn.archiver.select import ExcludeOptions, Selector
from cairn.archiver.targets import build_layout
from cairn.ops.backup import BackupOptions, start_prefetch


def _tree(root: Path) -> tuple[int, int]:
    """60 directories (one of them named "skip" with 5 files inside), 10 files each."""
    dirs = entries = 0
    for a in range(6):
        for b in range(9):
            d = root / f"d{a}" / ("skip" if (a, b) == (0, 0) else f"e{b}")
            d.mkdir(parents=True)
            for i in range(10):
                (d / f"f{i}").write_bytes(b"x")
    for _, dnames, fnames in os.walk(root):
        dirs += 1
        entries += len(dnames) + len(fnames)
    return dirs, entries


def _probe_sees(monkeypatch: pytest.MonkeyPatch, *, warm: bool) -> None:
    """Make the probe decide after 50 entries, and decide ``warm`` whatever it times."""
    monkeypatch.setattr(prefetch_module, "_WARM_PER_ENTRY", 1.0 if warm else 0.0)
    monkeypatch.setattr(prefetch_module, "_PROBE_ENTRIES", 50)


def test_a_cold_cache_lists_every_directory_but_the_excluded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs, entries = _tree(tmp_path / "src")
    _probe_sees(monkeypatch, warm=False)
    selector = Selector(ExcludeOptions(exclude=["skip"]))
    p = MetadataPrefetch(build_layout([str(tmp_path / "src")]), selector, threads=3).start()
    p.join(30)
    assert not p.warm
    assert p.dirs == dirs - 1  # "skip" was not entered
    assert p.entries == entries - 10
    assert len(p.signatures) == dirs - 1
    assert sum(t.ident is not None for t in p._threads) == 3


def test_a_warm_cache_is_listed_by_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs, entries = _tree(tmp_path / "src")
    _probe_sees(monkeypatch, warm=True)
    p = MetadataPrefetch(build_layout([str(tmp_path / "src")]), Selector(ExcludeOptions()))
    p.start().join(30)
    assert p.warm and p.dirs == dirs and p.entries == entries
    assert sum(t.ident is not None for t in p._threads) == 1


def test_signatures_are_the_walks(tmp_path: Path) -> None:
    """Each listed directory's signature is the one the backup walk computes."""
    src = tmp_path / "src"
    _tree(src)
    (src / "d1" / "link").symlink_to("e1")
    p = MetadataPrefetch(build_layout([str(src)]), Selector(ExcludeOptions()))
    p.start().join(30)
    for path, signature in p.signatures.items():
        names = sorted(os.listdir(path))
        parts = [entry_signature(n, os.lstat(os.path.join(path, n))) for n in names]
        assert signature == directory_signature(os.lstat(path).st_dev, parts)
    assert len(p.signatures) == p.dirs


def test_stop_ends_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path / "src")
    monkeypatch.setattr(prefetch_module, "_WARM_PER_ENTRY", 0.0)
    p = MetadataPrefetch(build_layout([str(tmp_path / "src")]), Selector(ExcludeOptions()))
    p.stop()
    p.start().join(30)
    assert p.dirs <= 1


def test_missing_targets_are_left_to_the_backup(tmp_path: Path) -> None:
    """The backup reports a missing target or a bad pattern; the prefetch just does not
    start."""
    assert start_prefetch([str(tmp_path / "nothing")], BackupOptions()) is None
    (tmp_path / "here").mkdir()
    p = start_prefetch([str(tmp_path / "here")], BackupOptions())
    assert p is not None
    p.join(30)
    assert p.dirs == 1
