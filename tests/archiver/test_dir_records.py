"""Directory records (archiver/dirsig.py): a backup takes an unchanged directory's tree
from the parent snapshot without loading it, and every kind of change still reaches the
next snapshot, as cairn and the real restic restore it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cairn.archiver.dirsig import DirRecords, options_key
from cairn.archiver.select import ExcludeOptions
from cairn.backend.local import LocalBackend
from cairn.ops.backup import BackupOptions, BackupResult, backup, start_prefetch
from cairn.ops.restore import restore
from cairn.repo.cache import Cache
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from tests.conftest import TEST_KDF, run_restic
from tests.treecompare import describe

PASSWORD = "pw"


class _Repo:
    """A local repository with a cache, opened afresh per backup like the CLI does."""

    def __init__(self, root: Path) -> None:
        self.path = root / "repo"
        self.cache = root / "cache"
        Repository.init(LocalBackend(self.path), PASSWORD, kdf=KdfParams(*TEST_KDF)).close()
        self.tree_loads = 0

    @contextmanager
    def open(self) -> Iterator[Repository]:
        with Repository.open(LocalBackend(self.path), PASSWORD) as repo:
            repo.use_cache(Cache.open(self.cache, repo.config.id))
            load_tree = repo.load_tree

            def counting(tree_id: bytes) -> list:  # type: ignore[type-arg]
                self.tree_loads += 1
                return load_tree(tree_id)

            repo.load_tree = counting  # type: ignore[method-assign]
            yield repo

    def backup(
        self, src: Path, opts: BackupOptions | None = None, prefetch: bool = False
    ) -> BackupResult:
        """One backup; with ``prefetch``, as the CLI runs it (signatures listed ahead)."""
        self.tree_loads = 0
        opts = opts or BackupOptions()
        ahead = start_prefetch([str(src)], opts) if prefetch else None
        with self.open() as repo:
            result = backup(repo, [str(src)], opts, prefetch=ahead)
        assert result.snapshot_id and not result.incomplete
        return result

    def tree(self, snapshot_id: str) -> bytes:
        with self.open() as repo:
            return repo.load_snapshot(snapshot_id).tree

    def records_file(self, snapshot_id: str) -> Path:
        [repo_cache] = [p for p in self.cache.iterdir() if p.is_dir()]
        return repo_cache / "cairn-dirs" / snapshot_id

    def assert_restores_to(self, src: Path, tmp: Path) -> None:
        """cairn and restic both restore the latest snapshot equal to ``src``."""
        want = describe(src)
        with self.open() as repo:
            restore(repo, "latest", str(tmp / "by-cairn"))
        assert describe(tmp / "by-cairn" / src.relative_to("/")) == want
        run_restic(self.path, "restore", "latest", "--target", str(tmp / "by-restic"))
        assert describe(tmp / "by-restic" / src.relative_to("/")) == want
        assert b"no errors were found" in run_restic(self.path, "check", "--read-data").stdout


def _tree(root: Path) -> Path:
    """Three levels of directories, files in each, a symlink and an empty directory."""
    for a in range(3):
        for b in range(3):
            d = root / f"a{a}" / f"b{b}"
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"f{i}.txt").write_bytes(f"{a}/{b}/{i}\n".encode() * (100 + i))
        (root / f"a{a}" / "top.bin").write_bytes(os.urandom(3000))
    (root / "link").symlink_to("a0/b0/f0.txt")
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_no_change_backup_loads_no_parent_tree(tmp_path: Path, prefetch: bool) -> None:
    src = _tree(tmp_path / "src")
    r = _Repo(tmp_path)
    first = r.backup(src, prefetch=prefetch)
    assert r.records_file(first.snapshot_id or "").is_file()
    second = r.backup(src, prefetch=prefetch)
    # Only the directories above the target are read: the path down to it ("/", "tmp", ...).
    above = len(src.parts) - 1
    assert r.tree_loads == above
    assert r.tree(second.snapshot_id or "") == r.tree(first.snapshot_id or "")
    s = second.stats
    assert (s.files_unmodified, s.files_new, s.files_changed) == (39, 0, 0)
    assert s.total_bytes_processed == first.stats.total_bytes_processed
    assert s.dirs_unmodified == first.stats.dirs_new and s.dirs_new == s.dirs_changed == 0
    assert s.bytes_read == 0 and s.data_blobs == s.tree_blobs == 0
    # The records carry on: a third backup takes the same path.
    r.backup(src, prefetch=prefetch)
    assert r.tree_loads == above
    r.assert_restores_to(src, tmp_path)


@pytest.mark.parametrize("prefetch", [False, True])
def test_every_change_reaches_the_next_snapshot(tmp_path: Path, prefetch: bool) -> None:
    src = _tree(tmp_path / "src")
    r = _Repo(tmp_path)
    r.backup(src, prefetch=prefetch)
    deep = src / "a1" / "b2"
    # Same size and mtime, new content: only ctime tells (as restic's rule).
    st = os.stat(deep / "f0.txt")
    (deep / "f0.txt").write_bytes(b"X" * st.st_size)
    os.utime(deep / "f0.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (src / "a0" / "b1" / "f1.txt").chmod(0o600)
    os.chown(src / "a2" / "b0" / "f2.txt", 4321, 8765)
    with contextlib.suppress(OSError):  # a file system without user xattrs
        os.setxattr(src / "a2" / "b2" / "f3.txt", b"user.note", b"later")
    (src / "a0" / "b0" / "new.txt").write_text("new file\n")
    (src / "a1" / "b0" / "f3.txt").unlink()
    (src / "link").unlink()
    (src / "link").symlink_to("a1/b1/f1.txt")
    (src / "a2" / "b1" / "sub").mkdir()
    (src / "a2" / "b1" / "sub" / "inner").write_text("in a new directory\n")
    os.rename(src / "a1" / "b1", src / "a1" / "renamed")
    (src / "empty").chmod(0o700)
    second = r.backup(src, prefetch=prefetch)
    assert second.stats.files_new >= 2 and second.stats.files_changed >= 3
    r.assert_restores_to(src, tmp_path)


def test_records_follow_the_exclude_options(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    (src / "a0" / "b0" / "scratch.tmp").write_text("temporary\n")
    r = _Repo(tmp_path)
    r.backup(src, BackupOptions(excludes=ExcludeOptions(exclude=["*.tmp"])))
    # Without the exclude, the directory is not the one the records describe.
    r.backup(src)
    r.assert_restores_to(src, tmp_path)


def test_records_are_kept_per_path(tmp_path: Path) -> None:
    """Two directories with the same tree ID, one of them behind a path-specific exclude:
    a file that appears in the other one is backed up. (Records are looked up by path, so
    the twin's record never applies; the signatures differ too, by inode and ctime.)"""
    src = tmp_path / "src"
    for d in ("A", "B"):
        (src / d).mkdir(parents=True)
    # One inode under two names: the two directories' trees are byte for byte the same.
    (src / "A" / "a").write_text("same\n")
    os.link(src / "A" / "a", src / "B" / "a")
    (src / "B" / "secret").write_text("excluded\n")
    opts = BackupOptions(excludes=ExcludeOptions(exclude=[str(src / "B" / "secret")]))
    r = _Repo(tmp_path)
    first = r.backup(src, opts)
    with r.open() as repo:
        repo.load_index()
        tree = repo.load_snapshot(first.snapshot_id or "").tree
        for part in src.relative_to("/").parts:
            sub = next(n.subtree for n in repo.load_tree(tree) if n.name == part.encode())
            assert sub is not None
            tree = sub
        subtrees = {n.name: n.subtree for n in repo.load_tree(tree)}
    assert subtrees[b"A"] == subtrees[b"B"]
    (src / "A" / "secret").write_text("not excluded here\n")
    second = r.backup(src, opts)
    assert second.stats.files_new == 1 and first.snapshot_id != second.snapshot_id
    (src / "B" / "secret").unlink()
    r.assert_restores_to(src, tmp_path)


def test_damaged_records_fall_back_to_the_parent_trees(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    r = _Repo(tmp_path)
    first = r.backup(src)
    path = r.records_file(first.snapshot_id or "")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    (src / "a1" / "b1" / "f2.txt").write_text("changed\n")
    second = r.backup(src)
    assert r.tree_loads > 0  # the slow path, per directory
    assert second.stats.files_changed == 1 and second.stats.files_unmodified == 38
    r.assert_restores_to(src, tmp_path)


def test_records_of_renamed_owners_or_other_options_are_not_used(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    r = _Repo(tmp_path)
    first = r.backup(src)
    sid = first.snapshot_id or ""
    options = options_key(ExcludeOptions())
    with r.open() as repo:
        records = DirRecords.load(repo, sid, options)
        assert records is not None and len(records.dirs) == 14
        assert DirRecords.load(repo, sid, options_key(ExcludeOptions(exclude=["x"]))) is None
        # As if the owner's name had changed since: the nodes' user field would differ.
        records.users = {uid: name + "-renamed" for uid, name in records.users.items()}
        records.save(repo, sid, options)
        assert DirRecords.load(repo, sid, options) is None


def test_a_dry_run_keeps_no_records(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    r = _Repo(tmp_path)
    first = r.backup(src)
    with r.open() as repo:
        result = backup(repo, [str(src)], BackupOptions(dry_run=True))
    assert result.snapshot_id is None
    files = list(r.records_file(first.snapshot_id or "").parent.iterdir())
    assert [p.name for p in files] == [first.snapshot_id]


def test_a_cache_tag_written_in_place_still_excludes_its_directory(tmp_path: Path) -> None:
    """Rewriting a marker file's content changes no listing, so the reuse looks again."""
    src = _tree(tmp_path / "src")
    tag = src / "a1" / "b1" / "CACHEDIR.TAG"
    tag.write_bytes(b"not yet a cache directory tag\n" + b" " * 40)
    opts = BackupOptions(excludes=ExcludeOptions(exclude_caches=True))
    r = _Repo(tmp_path)
    r.backup(src, opts)
    with open(tag, "r+b") as f:  # in place: a1's listing and b1's inode stay the same
        f.write(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    second = r.backup(src, opts)
    with r.open() as repo:
        repo.load_index()
        tree = repo.load_snapshot(second.snapshot_id or "").tree
        for part in (src / "a1").relative_to("/").parts:
            tree = next(n.subtree for n in repo.load_tree(tree) if n.name == part.encode()) or b""
        names = {n.name for n in repo.load_tree(tree)}
    assert b"b1" not in names and b"b0" in names and b"top.bin" in names
