"""LocalBackend against the shared backend contract, plus what only a directory can show."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from cairn.backend import local as local_module
from cairn.backend.base import Backend, FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.errors import AlreadyExistsError
from tests.backend.contract import BackendContract, new_id


def break_os_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next file write stores half its buffer, the one after fails with ENOSPC."""
    real_write = os.write
    calls = 0

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, memoryview(data)[: max(1, len(data) // 2)])
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


class TestLocal(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        b = LocalBackend(tmp_path / "repo")
        b.create()
        yield b
        b.close()

    @pytest.fixture
    def bare_backend(self, tmp_path: Path) -> Iterator[Backend]:
        with LocalBackend(tmp_path / "bare") as b:
            yield b

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        break_os_write(monkeypatch)


def test_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    b = LocalBackend(root)
    b.create()
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    for d in ("keys", "snapshots", "index", "locks"):
        assert (root / d).is_dir()
    h = Handle(FileType.PACK, new_id("ab"))
    b.save(h, b"data")
    path = root / "data" / "ab" / h.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert [p.name for p in path.parent.iterdir()] == [h.name], "no temporary file is left"


def test_failed_save_file_removes_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_file copies with sendfile: the disk filling up half-way leaves nothing."""
    b = LocalBackend(tmp_path / "repo")
    b.create()
    h = Handle(FileType.PACK, new_id("cd"))
    real_sendfile = os.sendfile
    calls = 0

    def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_sendfile(out_fd, in_fd, offset, count // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", sendfile)
    with tempfile.NamedTemporaryFile() as f:  # a file with a name is copied, never linked
        f.write(b"x" * 100_000)
        f.flush()
        with pytest.raises(Exception, match="No space left"):
            b.save_file(h, f, 100_000)
    monkeypatch.undo()
    assert list((tmp_path / "repo" / "data" / "cd").iterdir()) == []
    assert calls == 2


def _pack_in_temp_file(b: LocalBackend, data: bytes) -> BinaryIO:
    f = b.temp_file(1 << 16)
    f.write(data)
    f.flush()
    return f


def test_a_pack_built_in_a_temp_file_is_linked_into_place(tmp_path: Path) -> None:
    """The pack's temporary file becomes the stored file: the same inode, read-only, and
    nothing else left in the directory."""
    b = LocalBackend(tmp_path / "repo")
    b.create()
    h = Handle(FileType.PACK, new_id("ef"))
    data = os.urandom(300_000)
    with _pack_in_temp_file(b, data) as f:
        assert os.fstat(f.fileno()).st_nlink == 0, "built in an unnamed file"
        b.save_file(h, f, len(data))
        inode = os.fstat(f.fileno()).st_ino
    path = tmp_path / "repo" / "data" / "ef" / h.name
    assert path.stat().st_ino == inode
    assert path.stat().st_nlink == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [h.name]
    assert b.load(h) == data


def test_linking_never_replaces_a_stored_file(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    h = Handle(FileType.PACK, new_id("ef"))
    with _pack_in_temp_file(b, b"first") as f:
        b.save_file(h, f, 5)
    with _pack_in_temp_file(b, b"other") as f, pytest.raises(AlreadyExistsError):
        b.save_file(h, f, 5)
    assert b.load(h) == b"first"


def test_a_system_that_cannot_link_gets_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel refuses to link an unnamed file (EXDEV, EPERM, no AT_EMPTY_PATH),
    the pack is copied as before, and later packs are built in the system's temporary
    directory without trying again."""
    b = LocalBackend(tmp_path / "repo")
    b.create()
    tries = 0

    def refuse(fd: int, path: Path) -> None:
        nonlocal tries
        tries += 1
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(local_module, "_link_fd", refuse)
    data = os.urandom(100_000)
    h = Handle(FileType.PACK, new_id("ef"))
    with _pack_in_temp_file(b, data) as f:
        b.save_file(h, f, len(data))
        inode = os.fstat(f.fileno()).st_ino
    path = tmp_path / "repo" / "data" / "ef" / h.name
    assert path.read_bytes() == data
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    h2 = Handle(FileType.PACK, new_id("ef"))
    with _pack_in_temp_file(b, data) as f:
        b.save_file(h2, f, len(data))
    assert b.load(h2) == data
    assert tries == 1
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([h.name, h2.name])


def test_failed_save_removes_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    h = Handle(FileType.INDEX, new_id())
    break_os_write(monkeypatch)
    with pytest.raises(Exception, match="No space left"):
        b.save(h, b"x" * 100_000)
    monkeypatch.undo()
    assert list((tmp_path / "repo" / "index").iterdir()) == []


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /mnt/nas rw,relatime - nfs4 nas:/export rw
41 40 0:51 / /mnt/nas/local\\040disk rw - xfs /dev/sdb1 rw
42 27 0:52 / /home/u/remote rw - fuse.sshfs u@host: rw
"""


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("/srv/repo", True),
        ("/mnt/nas/repo", False),
        ("/mnt/nas", False),
        ("/mnt/nas/local disk/repo", True),
        ("/mnt/nasty/repo", True),  # not below /mnt/nas: on /
        ("/home/u/remote/repo", False),
    ],
)
def test_which_file_systems_list_consistently(path: str, local: bool) -> None:
    """Locks skip restic's 0.2 s pause only on a local disk: network and FUSE mounts
    keep it (their clients cache listings)."""
    assert local_module._on_local_disk(Path(path), MOUNTINFO) is local


def test_no_mount_table_means_not_known_local() -> None:
    assert not local_module._on_local_disk(Path("/srv/repo"), "")
