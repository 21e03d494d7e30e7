"""The in-memory model of a tree node (one directory entry), spec §9.

Encoding to and from restic's JSON lives in ``cairn.repo.tree``; building nodes from the
file system lives in the archiver, applying them to disk in the restorer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Go os.FileMode bits (spec §9.3).
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHARDEV = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19
MODE_PERM = 0o777

#: Node types as restic writes them.
NODE_TYPES = ("file", "dir", "symlink", "dev", "chardev", "fifo", "socket", "irregular")


@dataclass(frozen=True, order=True, slots=True)
class GoTime:
    """A timestamp as Go keeps it: Unix seconds, nanoseconds, and the zone offset that
    was in force (restic writes local time; the offset is needed to re-encode a tree to
    the same bytes, hence the same tree ID)."""

    sec: int
    nsec: int = 0
    offset: int = 0  # seconds east of UTC

    @classmethod
    def from_ns(cls, ns: int, offset: int = 0) -> GoTime:
        sec, nsec = divmod(ns, 1_000_000_000)
        return cls(sec, nsec, offset)

    def to_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nsec

    def same_instant(self, other: GoTime) -> bool:
        return self.sec == other.sec and self.nsec == other.nsec


ZERO_TIME = GoTime(-62135596800, 0, 0)  # 0001-01-01T00:00:00Z, Go's zero time


@dataclass(slots=True)
class ExtendedAttribute:
    name: str
    value: bytes | None


@dataclass(slots=True)
class Node:
    """One entry of a tree. ``name`` and ``linktarget`` are raw bytes (file names need not
    be UTF-8); IDs are raw 32-byte digests."""

    name: bytes
    type: str
    mode: int = 0
    mtime: GoTime = ZERO_TIME
    atime: GoTime = ZERO_TIME
    ctime: GoTime = ZERO_TIME
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    inode: int = 0
    device_id: int = 0
    size: int = 0
    links: int = 0
    linktarget: bytes = b""
    extended_attributes: list[ExtendedAttribute] = field(default_factory=list)
    #: restic >= 0.17 OS-specific extras, kept as raw JSON text per key to round-trip.
    generic_attributes: dict[str, str] | None = None
    device: int = 0
    #: Data blob IDs for files ([] for an empty file); None for every other type.
    content: list[bytes] | None = None
    subtree: bytes | None = None
    error: str = ""

    @property
    def perm(self) -> int:
        """POSIX permission bits including setuid/setgid/sticky."""
        bits = self.mode & MODE_PERM
        if self.mode & MODE_SETUID:
            bits |= 0o4000
        if self.mode & MODE_SETGID:
            bits |= 0o2000
        if self.mode & MODE_STICKY:
            bits |= 0o1000
        return bits


def go_mode(st_mode: int) -> int:
    """POSIX ``st_mode`` to Go's FileMode bits as restic stores them."""
    import stat

    mode = st_mode & MODE_PERM
    fmt = stat.S_IFMT(st_mode)
    if fmt == stat.S_IFDIR:
        mode |= MODE_DIR
    elif fmt == stat.S_IFLNK:
        mode |= MODE_SYMLINK
    elif fmt == stat.S_IFBLK:
        mode |= MODE_DEVICE
    elif fmt == stat.S_IFCHR:
        mode |= MODE_DEVICE | MODE_CHARDEV
    elif fmt == stat.S_IFIFO:
        mode |= MODE_NAMED_PIPE
    elif fmt == stat.S_IFSOCK:
        mode |= MODE_SOCKET
    elif fmt != stat.S_IFREG:
        mode |= MODE_IRREGULAR
    if st_mode & stat.S_ISUID:
        mode |= MODE_SETUID
    if st_mode & stat.S_ISGID:
        mode |= MODE_SETGID
    if st_mode & stat.S_ISVTX:
        mode |= MODE_STICKY
    return mode
