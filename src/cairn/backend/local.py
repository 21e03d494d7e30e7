"""A repository in a local directory (a disk, a removable drive, a mounted share).

Layout and habits are restic's (spec §16.1): packs sharded into ``data/xx/``, every file
written to a temporary name in its target directory, fsynced, renamed into place, the
directory fsynced, and the file made read-only. A crash therefore leaves either no file or
a complete one; stray temporary files are never listed because their names are not IDs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import stat as stat_mod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cairn.backend.base import DIR_TYPES, Backend, FileInfo, FileType, Handle, is_id_name
from cairn.backend.directfile import BlockWriter, DirectFile, enable_direct
from cairn.errors import AlreadyExistsError, BackendError, NotFoundError

#: Free blocks (1 MiB each) kept for reuse by the direct pack files of one repository: one
#: per open pack (data and tree) and two for the hashing and writing threads; more are
#: made when a big blob needs them and unmapped when they come back.
_DIRECT_BLOCKS = 4


class LocalBackend(Backend):
    """Files under one directory."""

    connections = 2
    #: A local read costs no round trip; smaller spans keep restore memory low
    #: (1 GiB restore: 32 MiB spans 210 MB peak RSS, 8 MiB 150 MB, same speed).
    read_span = 8 << 20
    fork_safe = True  # every call opens its own file

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(path)))
        self.location = str(self.root)
        self._file_mode, self._dir_mode = self._modes()
        self.consistent_listing = _on_local_disk(self.root)
        #: Whether packs are linked into place (None: not tried yet).
        self._linking: bool | None = None
        #: Whether pack files are written around the page cache (None: not tried yet).
        self._direct: bool | None = None
        self._blocks = BlockWriter(keep=_DIRECT_BLOCKS)

    def _modes(self) -> tuple[int, int]:
        """Group-readable config means a shared repository (0660/0770), as restic does."""
        try:
            mode = (self.root / "config").stat().st_mode
        except OSError:
            return 0o600, 0o700
        if mode & stat_mod.S_IRGRP:
            return 0o660, 0o770
        return 0o600, 0o700

    def _path(self, handle: Handle) -> Path:
        return self.root / handle.relpath()

    def close(self) -> None:
        """Unmap the pack blocks kept for reuse (a long-lived process, the scheduler or
        the web UI, opens repositories again and again)."""
        self._blocks.drop_free()

    def local_path(self, handle: Handle) -> Path:
        """Where the file lives, for a reader that streams it instead of loading it."""
        return self._path(handle)

    def create(self) -> None:
        if (self.root / "config").exists():
            raise AlreadyExistsError(f"{self.location}: a repository already exists here")
        try:
            self.root.mkdir(mode=self._dir_mode, parents=True, exist_ok=True)
            for t in DIR_TYPES:
                (self.root / t.value).mkdir(mode=self._dir_mode, exist_ok=True)
            for i in range(256):
                (self.root / "data" / f"{i:02x}").mkdir(mode=self._dir_mode, exist_ok=True)
        except OSError as e:
            raise BackendError(f"cannot create repository at {self.location}: {e.strerror}") from e

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        def write(fd: int) -> None:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]

        self._save_with(handle, write)

    def temp_file(self, buffering: int) -> BinaryIO:
        """An unnamed file (O_TMPFILE) in the repository's own file system, which
        :meth:`save_file` links into place instead of copying it: a backup of 100,000
        small files spent 0.5 s of system time copying its packs. Where the file system
        takes O_DIRECT, a :class:`DirectFile`, written around the page cache."""
        if self._linking is not False:
            try:
                fd = os.open(self.root / "data", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError:
                self._linking = False  # no O_TMPFILE here (an old kernel, NFS, FUSE)
            else:
                if self._direct is not False:
                    self._direct = enable_direct(fd)
                    if self._direct:
                        return cast(BinaryIO, DirectFile(fd, self._blocks))
                return open(fd, "w+b", buffering=buffering)  # noqa: SIM115 - the caller's
        return super().temp_file(buffering)

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        """Linked into place when ``file`` came from :meth:`temp_file` and the kernel
        allows it, else copied by the kernel (sendfile), without mapping or reading the
        file here."""
        src = file.fileno()
        linkable = self._linking is not False and _unnamed_of_size(src, size)
        if linkable and self._save_by_link(handle, src):
            return

        def write(fd: int) -> None:
            offset = 0
            while offset < size:
                try:
                    sent = os.sendfile(fd, src, offset, size - offset)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
                        raise
                    _copy_by_reads(src, fd, size)  # a file system sendfile refuses
                    return
                if sent == 0:
                    raise OSError(errno.EIO, f"source ended {size - offset} bytes early")
                offset += sent

        self._save_with(handle, write)

    def _save_by_link(self, handle: Handle, src: int) -> bool:
        """Give the unnamed file ``src`` its name in the repository: read-only, synced,
        then linked (which, unlike a rename, never replaces an existing file). False when
        this system cannot link it; nothing is then changed."""
        final = self._path(handle)
        try:
            os.fchmod(src, self._file_mode & ~0o222)
            os.fsync(src)
            try:
                _link_fd(src, final)
            except FileNotFoundError:
                if final.parent.is_dir():
                    raise
                final.parent.mkdir(mode=self._dir_mode, parents=True, exist_ok=True)
                _link_fd(src, final)
            self._fsync_dir(final.parent)
        except FileExistsError as e:
            raise AlreadyExistsError(f"{handle} already exists") from e
        except OSError as e:
            if e.errno in _CANNOT_LINK:
                self._linking = False
                return False
            raise self._error(e, handle, "save") from e
        self._linking = True
        return True

    def _save_with(self, handle: Handle, write: Callable[[int], None]) -> None:
        """Atomically create ``handle``: ``write`` fills a temporary file (given its
        descriptor), which is synced and renamed into place."""
        final = self._path(handle)
        if handle.type is not FileType.CONFIG and final.exists():
            raise AlreadyExistsError(f"{handle} already exists")
        tmp = final.with_name(f"{final.name}-tmp-{secrets.token_hex(8)}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode)
            except FileNotFoundError:
                final.parent.mkdir(mode=self._dir_mode, parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode)
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            self._fsync_dir(final.parent)
            os.chmod(final, self._file_mode & ~0o222)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(e, handle, "save") from e

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            # Some file systems (e.g. certain FUSE or network mounts) refuse directory fsync.
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
        finally:
            os.close(fd)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        try:
            with open(self._path(handle), "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                data = f.read() if length is None else _read_exact(f, length)
        except OSError as e:
            raise self._error(e, handle, "load") from e
        if length is not None and len(data) != length:
            raise BackendError(
                f"{handle}: short read ({len(data)} of {length} bytes at offset {offset})"
            )
        return data

    def stat(self, handle: Handle) -> int:
        try:
            return self._path(handle).stat().st_size
        except OSError as e:
            raise self._error(e, handle, "stat") from e

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            raise ValueError("config is not listed")
        base = self.root / file_type.value
        dirs = [base]
        if file_type is FileType.PACK:
            try:
                dirs = [base / d.name for d in os.scandir(base) if d.is_dir()]
            except FileNotFoundError:
                return
            except OSError as e:
                raise BackendError(f"cannot list {base}: {e.strerror}") from e
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise BackendError(f"cannot list {d}: {e.strerror}") from e
            for entry in entries:
                if is_id_name(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed while listing
                    yield FileInfo(entry.name, size)

    def remove(self, handle: Handle) -> None:
        try:
            os.unlink(self._path(handle))
        except OSError as e:
            raise self._error(e, handle, "remove") from e

    def _error(self, e: OSError, handle: Handle, what: str) -> BackendError:
        if isinstance(e, FileNotFoundError):
            return NotFoundError(f"{handle} does not exist in {self.location}")
        return BackendError(f"cannot {what} {handle} in {self.location}: {e.strerror or e}")


#: File systems whose directory listings every process sees at once: disks and memory,
#: not network or FUSE mounts (NFS, SMB, sshfs, ... cache listings on each client).
_LOCAL_FS = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs",
        "tmpfs", "ramfs", "overlay", "vfat", "exfat", "ntfs3", "hfsplus", "nilfs2",
    }
)  # fmt: skip


def _on_local_disk(path: Path, mountinfo: str | None = None) -> bool:
    """Whether ``path`` is on a file system in :data:`_LOCAL_FS`, by the mount table
    (Linux's /proc/self/mountinfo; elsewhere, or if it cannot be read: not known local)."""
    try:
        if mountinfo is None:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                mountinfo = f.read()
        target = os.path.realpath(path)
    except OSError:
        return False
    best, fstype = "", ""
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        # field 5 is the mount point (octal escapes for spaces); the type follows " - "
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, line.split(" - ", 1)[1].split(" ", 1)[0]
    return fstype in _LOCAL_FS


#: What linkat answers where unnamed files cannot be linked: no AT_EMPTY_PATH without
#: CAP_DAC_READ_SEARCH before Linux 6.10 (ENOENT), another mount (EXDEV), a sandbox.
_CANNOT_LINK = frozenset(
    {
        errno.ENOENT,
        errno.EXDEV,
        errno.EPERM,
        errno.EACCES,
        errno.EINVAL,
        errno.ENOSYS,
        errno.EOPNOTSUPP,
    }
)
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def _unnamed_of_size(fd: int, size: int) -> bool:
    """An O_TMPFILE file (no name yet) holding exactly ``size`` bytes: one that can
    become the stored file as it is."""
    st = os.fstat(fd)
    return st.st_nlink == 0 and st.st_size == size and stat_mod.S_ISREG(st.st_mode)


@functools.cache
def _linkat() -> Callable[..., int] | None:
    try:
        return cast(Callable[..., int], ctypes.CDLL(None, use_errno=True).linkat)
    except (OSError, AttributeError):
        return None


def _link_fd(fd: int, path: Path) -> None:
    """Give the open file ``fd`` the name ``path`` (linkat with AT_EMPTY_PATH, which the
    os module does not offer; else through /proc, which some sandboxes refuse)."""
    linkat = _linkat()
    if linkat is not None:
        if linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOENT, errno.EPERM) or not path.parent.is_dir():
            raise OSError(err, os.strerror(err), str(path))
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def _read_exact(f: object, length: int) -> bytes:
    """Read until ``length`` bytes or EOF (raw file objects may return short reads)."""
    read = f.read  # type: ignore[attr-defined]
    chunks = []
    remaining = length
    while remaining > 0:
        chunk = read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _copy_by_reads(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        block = os.pread(src, min(1 << 20, size - offset), offset)
        if not block:
            raise OSError(errno.EIO, f"source ended {size - offset} bytes early")
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view) :]
        offset += len(block)
