"""Create special files and apply a node's metadata to a restored path (spec §9.2, §9.3).

Order as restic: owner first (chown clears setuid/setgid, so chmod must follow), then
extended attributes (before chmod, so a read-only file still accepts them when not root),
then permissions (not on symlinks), then times last (everything before may touch them).
Failures are returned as warnings: the content is there, only metadata is off.
"""

from __future__ import annotations

import errno
import os
import stat

from cairn.repo.node import MODE_CHARDEV, ExtendedAttribute, Node

#: True when ownership and device nodes can be restored.
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _display(path: bytes) -> str:
    return os.fsdecode(path)


def remove_existing(path: bytes) -> None:
    """Remove a non-directory entry at ``path`` (restore overwrites, like restic 0.14)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", _display(path))
    os.unlink(path)


def make_dir(path: bytes) -> None:
    """Create a directory owner-writable (its real mode is applied at the very end)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return
        os.unlink(path)
        os.mkdir(path, 0o700)


def make_special(path: bytes, node: Node) -> str | None:
    """Create a symlink, FIFO or device node; returns a warning instead for what cannot be
    restored (sockets, devices when not root). Raises OSError on real failures."""
    kind = node.type
    if kind == "symlink":
        remove_existing(path)
        os.symlink(node.linktarget, path)
    elif kind == "fifo":
        remove_existing(path)
        os.mkfifo(path, 0o600)
    elif kind in ("dev", "chardev"):
        if not IS_ROOT:
            return f"{_display(path)}: device node not restored (needs root)"
        remove_existing(path)
        fmt = stat.S_IFCHR if kind == "chardev" or node.mode & MODE_CHARDEV else stat.S_IFBLK
        os.mknod(path, fmt | 0o600, node.device)
    else:
        return f"{_display(path)}: {kind} not restored"
    return None


def apply_metadata(path: bytes, node: Node) -> list[str]:
    """Owner (as root), xattrs, mode (not symlinks), atime/mtime with nanoseconds."""
    perm = None if node.type == "symlink" else node.perm
    return set_metadata(
        path,
        node.uid,
        node.gid,
        node.extended_attributes,
        perm,
        node.atime.to_ns(),
        node.mtime.to_ns(),
    )


def set_metadata(
    path: bytes,
    uid: int,
    gid: int,
    xattrs: list[ExtendedAttribute],
    perm: int | None,
    atime_ns: int,
    mtime_ns: int,
    *,
    fd: int | None = None,
) -> list[str]:
    """What :func:`apply_metadata` does, from the values (``perm`` None: a symlink);
    through ``fd`` when given (an open regular file: no path lookups), ``path`` then
    only names it in warnings."""
    warnings: list[str] = []
    target: bytes | int = path if fd is None else fd
    # never follow a symlink at ``path``; a descriptor is the file itself (and the calls
    # refuse follow_symlinks=False with one)
    follow = fd is not None
    if IS_ROOT:
        try:
            os.chown(target, uid, gid, follow_symlinks=follow)
        except (OSError, OverflowError) as e:
            warnings.append(f"{_display(path)}: cannot set owner: {getattr(e, 'strerror', e)}")
    for xa in xattrs:
        try:
            os.setxattr(target, xa.name, xa.value or b"", follow_symlinks=follow)
        except OSError as e:
            warnings.append(f"{_display(path)}: cannot set xattr {xa.name}: {e.strerror}")
    if perm is not None:
        try:
            os.chmod(target, perm)
        except OSError as e:
            warnings.append(f"{_display(path)}: cannot set mode: {e.strerror}")
    try:
        os.utime(target, ns=(atime_ns, mtime_ns), follow_symlinks=follow)
    except (OSError, OverflowError) as e:
        warnings.append(f"{_display(path)}: cannot set times: {e}")
    return warnings
