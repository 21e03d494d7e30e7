"""Build tree nodes from the file system, the way restic 0.14 records them (spec §9.2).

Times carry the local zone offset in force at that instant, because restic writes local
time and the offset is part of the tree bytes (same tree IDs as restic on the same machine).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time
from functools import lru_cache

from cairn.repo.node import ExtendedAttribute, GoTime, Node, go_mode


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return ""


def local_offset(sec: int) -> int:
    """Seconds east of UTC of the local zone at ``sec`` (restic writes local times)."""
    try:
        return time.localtime(sec).tm_gmtoff
    except (OverflowError, OSError, ValueError):
        return 0


_offset_cache: dict[int, int] = {}


def go_time(ns: int) -> GoTime:
    """A GoTime in the local zone for a nanosecond timestamp."""
    sec, nsec = divmod(ns, 1_000_000_000)
    # Zone offsets change at most a few times a year; cache by hour to skip localtime().
    hour = sec // 3600
    off = _offset_cache.get(hour)
    if off is None:
        if len(_offset_cache) > 100_000:
            _offset_cache.clear()
        off = _offset_cache[hour] = local_offset(sec)
    return GoTime(sec, nsec, off)


def node_type(st_mode: int) -> str:
    fmt = stat.S_IFMT(st_mode)
    return {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFBLK: "dev",
        stat.S_IFCHR: "chardev",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
    }.get(fmt, "irregular")


#: Stands, by identity, for extended attributes not read yet: a regular file's are read
#: where the file is opened (archiver.py), so the walk does not ask for them by path.
XATTRS_UNREAD: list[ExtendedAttribute] = []


def read_xattrs(path: bytes | int) -> tuple[list[ExtendedAttribute], str | None]:
    """Extended attributes in the order the OS lists them, and a warning if reading failed.
    ``path`` may be a file descriptor: a file being read anyway is asked through it."""
    follow = {} if isinstance(path, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(path, **follow)
    except OSError as e:
        if e.errno in (95, 61):  # EOPNOTSUPP, ENODATA: the file system has none
            return [], None
        return [], f"cannot list extended attributes: {e.strerror}"
    attrs: list[ExtendedAttribute] = []
    for name in names:
        try:
            value = os.getxattr(path, name, **follow)
        except OSError as e:
            if e.errno == 61:  # removed in between
                continue
            return attrs, f"cannot read extended attribute {name}: {e.strerror}"
        attrs.append(ExtendedAttribute(name, value))
    return attrs, None


def node_from_stat(
    name: bytes, path: bytes, st: os.stat_result, *, xattrs: bool = True
) -> tuple[Node, str | None]:
    """A node for one directory entry (content/subtree filled in later) and a warning,
    if some metadata could not be read. Without ``xattrs`` the extended attributes are
    left for whoever opens the file to read them (see :func:`read_xattrs`)."""
    ntype = node_type(st.st_mode)
    mtime = go_time(st.st_mtime_ns)
    node = Node(
        name=name,
        type=ntype,
        mode=go_mode(st.st_mode),
        mtime=mtime,
        atime=mtime,  # restic records atime only with --with-atime; otherwise = mtime
        ctime=go_time(st.st_ctime_ns),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        inode=st.st_ino,
        device_id=st.st_dev,
    )
    warning = None
    if ntype == "file":
        node.size = st.st_size
        node.links = st.st_nlink
        node.content = []
    elif ntype == "symlink":
        node.links = st.st_nlink
        try:
            node.linktarget = os.readlink(path)
        except OSError as e:
            warning = f"cannot read symlink: {e.strerror}"
    elif ntype in ("dev", "chardev"):
        node.links = st.st_nlink
        node.device = st.st_rdev
    if ntype != "symlink" and xattrs:  # restic 0.14 does not record xattrs of symlinks
        node.extended_attributes, xwarn = read_xattrs(path)
        warning = warning or xwarn
    return node, warning
