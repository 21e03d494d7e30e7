"""Forked restore workers (restorer/forked.py): a restore whose packs are written by worker
processes gives exactly the tree the backup read (content, modes, times, owners, xattrs,
hard links), including files whose blobs lie in several packs, which the parent creates
and finishes; a worker that dies fails only the files of its packs, with one clear error
each, and the restore ends instead of waiting for it."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import pytest

from cairn.backend.local import LocalBackend
from cairn.errors import RestoreError
from cairn.forking import fork_available
from cairn.ops.backup import BackupOptions, backup
from cairn.ops.restore import restore
from cairn.repo.cache import Cache
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from cairn.restorer import forked
from tests.conftest import TEST_KDF, run_restic, spy_on_pools
from tests.treecompare import describe

PASSWORD = "pw"

pytestmark = pytest.mark.skipif(
    not fork_available(), reason="forked restore workers need fork() and two cores"
)


def make_tree(root: Path) -> Path:
    rng = random.Random(11)
    shared = rng.randbytes(30_000)
    for d in range(8):
        sub = root / f"d{d}" / "sub"
        sub.mkdir(parents=True)
        for i in range(40):
            path = sub / f"f{i:02d}"
            path.write_bytes(rng.randbytes(rng.choice([0, 5, 3_000, 70_000])))
            os.chmod(path, rng.choice([0o600, 0o644, 0o755, 0o4750]))
            os.utime(path, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + d))
        (sub / "same").write_bytes(shared)  # one blob written to eight files
    # Longer than the largest chunk (8 MiB), so at least two blobs and packs whatever the
    # polynomial: at 3.5 MB, one chunk in ~20 repositories had no cut point at all.
    (root / "spans-packs.bin").write_bytes(rng.randbytes(9_000_000))
    (root / "zeros.bin").write_bytes(bytes(1 << 20))  # two sparse zero chunks: no pack
    (root / "hard-a").write_bytes(rng.randbytes(4_000))
    os.link(root / "hard-a", root / "hard-b")
    with contextlib.suppress(OSError):  # a file system without user xattrs
        os.setxattr(root / "d2" / "sub" / "f03", b"user.note", b"restored by a worker")
    return root


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    """(repository, source): the tree backed up in packs of 256 KiB, so that it fills
    dozens of packs and the big file spans several of them."""
    src = make_tree(tmp_path / "src")
    repo_path = tmp_path / "repo"
    Repository.init(LocalBackend(repo_path), PASSWORD, kdf=KdfParams(*TEST_KDF)).close()
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        repo.pack_size = 256 * 1024
        backup(repo, [str(src)], BackupOptions())
    return repo_path, src


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The process counts of the restore pools started."""
    return spy_on_pools(monkeypatch, forked)


def restored(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def test_processes_restore_the_tree_exactly(
    backed_up: tuple[Path, Path], tmp_path: Path, pools: list[int]
) -> None:
    repo_path, src = backed_up
    target = tmp_path / "out"
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        result = restore(repo, "latest", str(target), verify=True)
    assert pools == [2], "the restore did not fork its workers"
    assert result.errors == [] and result.warnings == []
    assert result.verified_files == result.files - 1  # the second name of the hard link
    assert describe(restored(target, src)) == describe(src)
    # the file whose blobs lie in several packs was created and finished by the parent
    spans = os.fsencode(str(src / "spans-packs.bin"))
    assert len({pb.pack_id for pb in _blob_copies(repo_path, spans)}) > 1


def test_processes_also_restore_through_the_local_cache(
    backed_up: tuple[Path, Path], tmp_path: Path, pools: list[int]
) -> None:
    """The CLI opens a local repository through its cache: packs are still read from the
    repository directory itself, so the workers fork all the same."""
    repo_path, src = backed_up
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        repo.use_cache(Cache.open(tmp_path / "cache", repo.config.id))
        result = restore(repo, "latest", str(tmp_path / "out"))
    assert pools == [2]
    assert result.errors == []
    assert describe(restored(tmp_path / "out", src)) == describe(src)


def _blob_copies(repo_path: Path, path: bytes) -> list[Any]:
    from cairn.repo.ids import BlobType
    from cairn.repo.treepath import subtree_at

    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        repo.load_index()
        _, snap = repo.find_snapshot("latest")
        parent, _, name = path.rpartition(b"/")
        tree = subtree_at(repo, snap.tree, os.fsdecode(parent).lstrip("/"))
        node = next(n for n in repo.load_tree(tree) if n.name == name)
        found = [repo.index.lookup(BlobType.DATA, b) for b in node.content or ()]
        return [pb for pb in found if pb is not None]


def test_threads_and_processes_agree(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo_path, src = backed_up
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        restore(repo, "latest", str(tmp_path / "procs"))
        restore(repo, "latest", str(tmp_path / "threads"), workers=1)  # one worker: threads
    assert describe(restored(tmp_path / "procs", src)) == describe(
        restored(tmp_path / "threads", src)
    )
    run_restic(repo_path, "restore", "latest", "--target", str(tmp_path / "restic"))
    assert describe(restored(tmp_path / "restic", src)) == describe(src)


def _die(work: Any) -> Any:
    os._exit(3)  # a worker killed mid-restore (out of memory, say)


def test_a_dying_worker_fails_its_files_and_the_restore_ends(
    backed_up: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path, src = backed_up
    monkeypatch.setattr(forked, "_restore_pack_forked", _die)
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        result = restore(repo, "latest", str(tmp_path / "out"))
    assert result.errors
    odd = [e for e in result.errors if "worker process" not in e or "exited" not in e]
    assert [e.rpartition("/")[2] for e in odd] == ["hard-a failed"]  # hard-b: not linked
    with pytest.raises(RestoreError, match=r"errors during restore: .*worker process.* exited"):
        result.raise_for_errors()
    # empty files and the all-zero file need no pack: they are restored all the same
    assert (restored(tmp_path / "out", src) / "zeros.bin").read_bytes() == bytes(1 << 20)
    monkeypatch.undo()
    # nothing in the repository was harmed
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        again = restore(repo, "latest", str(tmp_path / "again"))
    assert again.errors == []
    assert describe(restored(tmp_path / "again", src)) == describe(src)
