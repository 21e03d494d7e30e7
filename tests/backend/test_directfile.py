"""Pack files written with O_DIRECT: their bytes, their length and their hash, on the
machine's real file system."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from cairn.backend import directfile
from cairn.backend.base import FileType, Handle
from cairn.backend.directfile import ALIGN, BlockWriter, DirectFile, enable_direct
from cairn.backend.local import LocalBackend
from tests.backend.contract import new_id

BLOCK = 64 * 1024  # small blocks, so that a few hundred KiB cross many of them


def direct_file(where: Path, writer: BlockWriter) -> DirectFile:
    fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    if not enable_direct(fd):
        os.close(fd)
        pytest.skip(f"{where}: the file system refuses O_DIRECT")
    return DirectFile(fd, writer)


def content(f: DirectFile) -> bytes:
    with open(f"/proc/self/fd/{f.fileno()}", "rb") as r:
        return r.read()


def pieces(seed: int) -> list[bytes]:
    """Writes of every awkward length: empty, one byte, a block exactly, more than a
    block, a block's remainder."""
    rng = random.Random(seed)
    sizes = [0, 1, 4095, 4096, BLOCK - 4097, BLOCK, BLOCK + 1, 3 * BLOCK + 17, 5, 70_000]
    sizes += [rng.randrange(1, 3 * BLOCK) for _ in range(40)]
    return [rng.randbytes(n) for n in sizes]


def test_the_file_holds_what_was_written_and_its_hash(tmp_path: Path) -> None:
    writer = BlockWriter(keep=2, size=BLOCK)
    expected = bytearray()
    with direct_file(tmp_path, writer) as f:
        for piece in pieces(1):
            assert f.write(piece) == len(piece)
            expected += piece
        f.flush()
        assert os.fstat(f.fileno()).st_size == len(expected)
        assert len(expected) % ALIGN, "the test needs a partial last block"
        assert content(f) == expected
        assert f.sha256() == hashlib.sha256(expected).digest()


def test_writing_goes_on_after_a_flush(tmp_path: Path) -> None:
    """A flush writes the partial block and cuts the file; later writes continue it, and
    each flush gives the hash of everything so far."""
    writer = BlockWriter(keep=2, size=BLOCK)
    expected = bytearray()
    with direct_file(tmp_path, writer) as f:
        for i, piece in enumerate(pieces(2)):
            f.write(piece)
            expected += piece
            if i % 7 == 3:
                f.flush()
                assert f.sha256() == hashlib.sha256(expected).digest()
                assert content(f) == expected
        f.flush()
        assert content(f) == expected
        assert f.sha256() == hashlib.sha256(expected).digest()
        f.write(b"more")
        with pytest.raises(ValueError, match="needs a flush"):
            f.sha256()


def test_files_share_one_writer_and_its_blocks(tmp_path: Path) -> None:
    """Four files written at once by four threads through one writer: every file gets its
    own bytes, in order, and the writer keeps no more free blocks than asked."""
    writer = BlockWriter(keep=3, size=BLOCK)
    results: dict[int, tuple[bytes, bytes, bytes]] = {}

    def fill(n: int) -> None:
        expected = b"".join(pieces(10 + n))
        with direct_file(tmp_path, writer) as f:
            view = memoryview(expected)
            while view:
                f.write(view[:9000])
                view = view[9000:]
            f.flush()
            results[n] = (expected, content(f), f.sha256())

    threads = [threading.Thread(target=fill, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    for expected, got, sha in results.values():
        assert got == expected
        assert sha == hashlib.sha256(expected).digest()
    assert 0 < len(writer._free) <= 3
    writer.drop_free()
    assert writer._free == []


def test_idle_threads_end_and_the_next_file_starts_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hashing and writing threads end once idle; a file written after that starts a
    new pair, and both files come out whole."""
    monkeypatch.setattr(directfile, "_IDLE_SECONDS", 0.05)
    writer = BlockWriter(keep=2, size=BLOCK)

    def pack_threads() -> list[threading.Thread]:
        names = ("cairn-pack-hash", "cairn-pack-write")
        return [t for t in threading.enumerate() if t.name in names]

    for seed in (3, 4):
        expected = b"".join(pieces(seed))
        with direct_file(tmp_path, writer) as f:
            f.write(expected)
            assert {t.name for t in pack_threads()} == {"cairn-pack-hash", "cairn-pack-write"}
            f.flush()
            assert content(f) == expected
            assert f.sha256() == hashlib.sha256(expected).digest()
        for t in pack_threads():
            t.join(timeout=10)
        assert pack_threads() == []


def test_a_write_error_reaches_the_writer_of_the_file(tmp_path: Path) -> None:
    """A block the disk refuses (here: the descriptor is read-only, a real EBADF from the
    kernel) fails the file's next write or flush, never silently."""
    writer = BlockWriter(keep=0, size=BLOCK)  # every block unmapped when it comes back
    path = tmp_path / "ro"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    f = DirectFile(fd, writer)
    try:
        with pytest.raises(OSError) as caught:  # noqa: PT012 - the error may come at either call
            f.write(os.urandom(3 * BLOCK))
            f.flush()
        assert caught.value.errno == errno.EBADF
    finally:
        f.close()
    # The writer thread survived the failed blocks and writes the next file's.
    data = os.urandom(3 * BLOCK + 100)
    with direct_file(tmp_path, writer) as g:
        g.write(data)
        g.flush()
        assert content(g) == data


def test_a_file_system_that_refuses_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file system on this machine refuses an aligned O_DIRECT write once it accepted
    the flag (some FUSE and network file systems do), so os.pwrite is made to refuse
    them with EINVAL, as those do: the file turns O_DIRECT off and its bytes are intact."""
    real_pwrite = os.pwrite
    refused = 0

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        nonlocal refused
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(directfile.os, "pwrite", pwrite)
    writer = BlockWriter(keep=2, size=BLOCK)
    expected = b"".join(pieces(3))
    with direct_file(tmp_path, writer) as f:
        f.write(expected)
        f.flush()
        assert content(f) == expected
        assert f.sha256() == hashlib.sha256(expected).digest()
    assert refused == 1


def test_local_packs_are_direct_files_linked_into_place(tmp_path: Path) -> None:
    """On this machine's file system a pack is built around the page cache and then
    linked, read-only, as the stored file; what the backend loads is what was written."""
    b = LocalBackend(tmp_path / "repo")
    b.create()
    data = os.urandom(5 * (1 << 20) + 12345)
    h = Handle(FileType.PACK, new_id("ab"))
    f = b.temp_file(1 << 20)
    try:
        assert isinstance(f, DirectFile)
        f.write(data[:100])
        f.write(data[100:])
        f.flush()
        assert f.sha256() == hashlib.sha256(data).digest()
        b.save_file(h, f, len(data))  # type: ignore[arg-type]
    finally:
        f.close()
    assert b.load(h) == data
    path = tmp_path / "repo" / "data" / "ab" / h.name
    assert path.stat().st_size == len(data)
    assert path.stat().st_nlink == 1
