"""Forked encoders (archiver/encoders.py): files read and sealed in worker processes land
in the repository exactly as threads would put them there, as the real restic checks and
restores them; a file an encoder cannot read is skipped with a warning, and an encoder
that dies fails the backup with one clear error and leaves the repository sound."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from cairn.archiver import archiver, encoders
from cairn.backend.local import LocalBackend
from cairn.errors import CairnError
from cairn.forking import fork_available
from cairn.ops.backup import BackupOptions, BackupResult, backup
from cairn.ops.restore import restore
from cairn.repo.ids import BlobType
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from tests.conftest import TEST_KDF, run_restic, spy_on_pools
from tests.treecompare import describe

PASSWORD = "pw"


@pytest.fixture(autouse=True)
def file_readers() -> str:
    """These tests choose the mode themselves (overrides the conftest's parametrization)."""
    return "chosen per test"


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker counts of the encoder pools started."""
    return spy_on_pools(monkeypatch, encoders)


def make_tree(root: Path, seed: int = 7) -> Path:
    """Small files, files of several chunks below and above the encoders' size limit,
    empty files, duplicate contents in many directories, a hard link and xattrs."""
    rng = random.Random(seed)
    shared = rng.randbytes(40_000)
    for d in range(12):
        sub = root / f"d{d:02d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(30):
            size = rng.choice([0, 1, 700, 9_000, 60_000])
            (sub / f"f{i:02d}.bin").write_bytes(rng.randbytes(size))
        (sub / "same.bin").write_bytes(shared)  # one blob, twelve files
        (root / f"d{d:02d}" / "text.txt").write_bytes(b"line of text %d\n" % d * 3000)
    (root / "medium.bin").write_bytes(rng.randbytes(900_000))  # 1-2 chunks, an encoder
    (root / "large.bin").write_bytes(rng.randbytes(3_000_000))  # above MAX_FILE: threads
    (root / "hard-a").write_bytes(rng.randbytes(5_000))
    os.link(root / "hard-a", root / "hard-b")  # hard links stay with threads
    with contextlib.suppress(OSError):  # a file system without user xattrs
        os.setxattr(root / "d03" / "inner" / "f04.bin", b"user.note", b"sealed elsewhere")
        os.setxattr(root / "medium.bin", b"user.empty", b"")
    return root


def run_backup(repo_path: Path, src: Path, processes: int, **opts: Any) -> BackupResult:
    if not (repo_path / "config").exists():
        Repository.init(LocalBackend(repo_path), PASSWORD, kdf=KdfParams(*TEST_KDF)).close()
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        return backup(repo, [str(src)], BackupOptions(encoder_processes=processes, **opts))


def data_blob_ids(repo_path: Path) -> list[bytes]:
    with Repository.open(LocalBackend(repo_path), PASSWORD) as repo:
        repo.load_index()
        return [b.id for b in repo.index if b.type is BlobType.DATA]


def assert_restic_restores(repo_path: Path, src: Path, target: Path) -> None:
    """The real restic finds every byte in order and restores ``src`` exactly."""
    check = run_restic(repo_path, "check", "--read-data")
    assert b"no errors were found" in check.stdout
    run_restic(repo_path, "restore", "latest", "--target", str(target))
    assert describe(target / str(src).lstrip("/")) == describe(src)


needs_fork = pytest.mark.skipif(
    not fork_available(), reason="forked encoders need fork() and two cores"
)


@needs_fork
def test_encoders_store_what_threads_store(tmp_path: Path, pools: list[int]) -> None:
    src = make_tree(tmp_path / "src")
    # one repository, copied before either backup: the same chunker polynomial for both
    Repository.init(LocalBackend(tmp_path / "threads"), PASSWORD, kdf=KdfParams(*TEST_KDF)).close()
    shutil.copytree(tmp_path / "threads", tmp_path / "forked")
    by_threads = run_backup(tmp_path / "threads", src, 0)
    assert pools == []
    forked = run_backup(tmp_path / "forked", src, 2)
    assert pools == [2]
    for result in (by_threads, forked):
        assert result.snapshot_id and not result.incomplete
    a, b = by_threads.stats, forked.stats
    assert (b.files_new, b.data_blobs, b.data_added) == (a.files_new, a.data_blobs, a.data_added)
    # each blob once, though twelve files in different batches share one
    ids = data_blob_ids(tmp_path / "forked")
    assert len(ids) == len(set(ids)) == b.data_blobs
    assert sorted(ids) == sorted(data_blob_ids(tmp_path / "threads"))

    check = run_restic(tmp_path / "forked", "check", "--read-data")
    assert b"no errors were found" in check.stdout
    source = describe(src)
    run_restic(tmp_path / "forked", "restore", "latest", "--target", str(tmp_path / "by-restic"))
    assert describe(tmp_path / "by-restic" / str(src).lstrip("/")) == source
    with Repository.open(LocalBackend(tmp_path / "forked"), PASSWORD) as repo:
        assert not restore(repo, "latest", str(tmp_path / "by-cairn")).errors
    assert describe(tmp_path / "by-cairn" / str(src).lstrip("/")) == source


@needs_fork
def test_files_of_small_directories_travel_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like /usr/share/doc: hundreds of directories of one to three small files. A batch
    for an encoder spans directories (cut at each directory's end, batches were too small
    to keep the encoders busy); a hard link among them goes to a thread alone, without
    the batch; restic finds every file intact."""
    rng = random.Random(3)
    src = tmp_path / "src"
    for d in range(300):
        sub = src / f"pkg{d:03d}"
        sub.mkdir(parents=True)
        for i in range(1 + d % 3):
            (sub / f"f{i}").write_bytes(rng.randbytes(rng.choice([0, 200, 3000])))
        if d % 50 == 7:
            os.link(sub / "f0", sub / "f0-link")
    batches: list[int] = []
    submit = encoders.Encoders.submit

    def counting(self: encoders.Encoders, files: list[encoders.FileTask]) -> Any:
        batches.append(len(files))
        return submit(self, files)

    monkeypatch.setattr(encoders.Encoders, "submit", counting)
    result = run_backup(tmp_path / "repo", src, 2)
    assert result.snapshot_id and not result.incomplete
    assert result.stats.files_new == 606
    assert sum(batches) == 606 - 12  # six hard-linked pairs stay with the threads
    assert len(batches) <= 300 // (archiver._BATCH_DIRS - 1) + 2
    assert max(batches) <= encoders.BATCH_FILES
    assert_restic_restores(tmp_path / "repo", src, tmp_path / "restored")


@needs_fork
def test_second_backup_through_encoders_reads_only_changes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    first = run_backup(tmp_path / "repo", src, 2)
    (src / "d01" / "inner" / "f03.bin").write_bytes(b"rewritten" * 1000)
    with open(src / "d05" / "text.txt", "ab") as f:
        f.write(b"appended\n")
    (src / "d07" / "new.bin").write_bytes(os.urandom(20_000))
    second = run_backup(tmp_path / "repo", src, 2)
    assert second.parent_id == first.snapshot_id
    s = second.stats
    assert (s.files_new, s.files_changed) == (1, 2)
    assert s.files_unmodified == first.stats.files_new - 2
    assert_restic_restores(tmp_path / "repo", src, tmp_path / "out")


@needs_fork
def test_encoders_chunking_at_once_each_keep_their_own_buffers(tmp_path: Path) -> None:
    """Many files of one to two chunks, which every encoder cuts in its own reused buffer
    and seals into its own slot at the same time: each blob holds its own file's bytes
    (a buffer the encoders shared would mix them, and restic's check would see it)."""
    rng = random.Random(11)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(48):
        size = rng.randrange(encoders.MAX_FILE // 2 + 1, encoders.MAX_FILE)
        (src / f"m{i:02d}.bin").write_bytes(rng.randbytes(size))
    result = run_backup(tmp_path / "repo", src, 2)
    assert not result.incomplete and result.stats.files_new == 48
    assert_restic_restores(tmp_path / "repo", src, tmp_path / "out")


@needs_fork
def test_sealed_blobs_that_overflow_the_shared_slot_travel_in_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose sealed blobs do not fit its slot (a file that grew after the walk)
    still stores every blob: the rest comes back through the result pipe."""
    monkeypatch.setattr(encoders, "_SLOT", 50_000)
    src = make_tree(tmp_path / "src")
    result = run_backup(tmp_path / "repo", src, 2)
    assert not result.incomplete
    assert_restic_restores(tmp_path / "repo", src, tmp_path / "out")


@needs_fork
def test_a_file_an_encoder_cannot_open_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "src")
    real_open = encoders.open_regular

    def refuse(path: bytes) -> int:
        if path.endswith(b"d02/inner/f05.bin"):
            raise PermissionError(13, "Permission denied")
        return real_open(path)

    monkeypatch.setattr(encoders, "open_regular", refuse)  # the children inherit it
    result = run_backup(tmp_path / "repo", src, 2)
    assert result.snapshot_id and result.incomplete
    assert [e for e in result.stats.errors if "f05.bin" in e] == [
        f"{src}/d02/inner/f05.bin: Permission denied"
    ]
    run_restic(tmp_path / "repo", "restore", "latest", "--target", str(tmp_path / "out"))
    restored = describe(tmp_path / "out" / str(src).lstrip("/"))
    expected = describe(src)
    del expected[b"d02/inner/f05.bin"]
    assert restored == expected


@needs_fork
@pytest.mark.parametrize("how", ["raises", "dies"])
def test_an_encoder_failure_fails_the_backup_and_leaves_the_repository_sound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    src = make_tree(tmp_path / "src")
    run_backup(tmp_path / "repo", src, 2)  # a first snapshot that must stay restorable
    (src / "d09" / "inner" / "boom.bin").write_bytes(os.urandom(3000))
    real_encode = encoders._Encoder.encode_file

    def failing(self: Any, path: bytes, size: int, want_xattrs: bool, fd: Any) -> Any:
        if path.endswith(b"boom.bin"):
            if how == "dies":
                os._exit(9)  # as if the kernel killed the worker
            os.close(fd)
            raise RuntimeError("disk on fire")
        return real_encode(self, path, size, want_xattrs, fd)

    monkeypatch.setattr(encoders._Encoder, "encode_file", failing)
    with pytest.raises(CairnError, match="a backup worker process failed"):
        run_backup(tmp_path / "repo", src, 2)
    assert len(list((tmp_path / "repo" / "snapshots").iterdir())) == 1
    assert not list((tmp_path / "repo" / "locks").iterdir())
    check = run_restic(tmp_path / "repo", "check", "--read-data")
    assert b"no errors were found" in check.stdout
