"""Directory signatures: a backup that skips unchanged directories without reading the
parent snapshot's trees.

restic (and cairn without this) decides per file whether it changed: it decodes each
directory's tree from the parent snapshot and compares every node with a fresh ``lstat``.
Decoding dominates a no-change backup of many small files. Instead, cairn keeps, for each
directory of the snapshot it just wrote, a *record*: the tree ID it produced, a hash of the
``lstat`` fields of every entry (the *signature*), the data blob IDs of its files and the
tree IDs of its subdirectories. The next backup lists the directory, hashes the same
fields and, when the signature, the parent's tree ID and the exclude options are the
same and every blob is still in the index, the directory's nodes are the ones the parent
has: its tree is reused and only its subdirectories are visited.

Why that is exact: a node is built from ``lstat`` (type, mode, size, times, owner,
inode, device, links), the extended attributes, the link target and, for a file, its
content. Changing any of the last three changes ctime, which is in the signature; owner
names come from the uid/gid, and the file keeps the names it resolved, which are checked
again when it is loaded. The records are kept per path (a tree ID may appear at several
paths whose exclude patterns differ) and per parent snapshot, in the local cache,
encrypted and authenticated with the repository key like everything cairn stores. A
missing or damaged file only means the next backup takes the slow path.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
from collections.abc import Iterable

from cairn import heap
from cairn.archiver.fsmeta import group_name, user_name
from cairn.archiver.select import ExcludeOptions
from cairn.errors import CairnError
from cairn.repo.compression import compress, decompress
from cairn.repo.repository import Repository

#: A directory's record: (tree ID, signature, data blob IDs joined, regular files, their
#: bytes, {subdirectory name: its tree ID}).
DirRecord = tuple[bytes, bytes, bytes, int, int, dict[bytes, bytes]]

#: Changes whenever the record or signature layout changes: older files are ignored.
_VERSION = 1
_KIND = "dirs"
#: Snapshots whose records are kept: the parents of the next backups of a few path sets.
_KEEP = 8
_ENTRY = struct.Struct("<IQQQIIQqqq")


def entry_signature(name: bytes, st: os.stat_result) -> bytes:
    """The fields of one entry that its node is built from (see the module docstring)."""
    return (
        name
        + b"\0"
        + _ENTRY.pack(
            st.st_mode,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_rdev,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
    )


def directory_signature(dir_dev: int, entries: Iterable[bytes]) -> bytes:
    """The signature of a listing: ``entries`` are :func:`entry_signature` values in
    name order; the directory's own device decides ``--one-file-system``."""
    h = hashlib.blake2b(dir_dev.to_bytes(8, "little"), digest_size=16)
    h.update(b"".join(entries))
    return h.digest()


def options_key(opts: ExcludeOptions) -> bytes:
    """What the exclude options decide, including the pattern files' current contents:
    records from a backup with other options never apply."""
    files = []
    for f in opts.exclude_file + opts.iexclude_file:
        try:
            with open(f, "rb") as fh:
                files.append(fh.read())
        except OSError:
            files.append(b"?")
    text = repr(
        (
            opts.exclude,
            opts.iexclude,
            files,
            opts.exclude_caches,
            opts.exclude_if_present,
            opts.exclude_larger_than,
            opts.one_file_system,
        )
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class DirRecords:
    """The records of one snapshot: loaded for the parent, built for the new one."""

    def __init__(
        self,
        dirs: dict[bytes, DirRecord] | None = None,
        users: dict[int, str] | None = None,
        groups: dict[int, str] | None = None,
    ) -> None:
        self.dirs: dict[bytes, DirRecord] = dirs or {}
        #: The owner names the nodes were given, so a renamed user invalidates them.
        self.users: dict[int, str] = users or {}
        self.groups: dict[int, str] = groups or {}

    @classmethod
    def load(cls, repo: Repository, snapshot_id: str, options: bytes) -> DirRecords | None:
        """The records written with ``snapshot_id`` under the same options, or None."""
        cache = repo.cache
        if cache is None:
            return None
        sealed = cache.get_own(_KIND, snapshot_id)
        if sealed is None:
            return None
        try:
            text = decompress(repo.key.open(sealed))
            del sealed  # not held while the records are built from the text
            version, opts, users, groups, dirs = marshal.loads(text)
        except (CairnError, ValueError, EOFError, TypeError):
            return None  # damaged or from another repository key: the slow path
        del text
        # The sealed, opened and decompressed copies are garbage now: 5x the file, which
        # the heap would otherwise keep.
        heap.trim()
        if version != _VERSION or opts != options:
            return None
        if any(user_name(u) != n for u, n in users.items()) or any(
            group_name(g) != n for g, n in groups.items()
        ):
            return None
        return cls(dirs, users, groups)

    def save(self, repo: Repository, snapshot_id: str, options: bytes) -> None:
        """Keep the records for the next backup (silently nothing without a cache)."""
        cache = repo.cache
        if cache is None:
            return
        payload = (_VERSION, options, self.users, self.groups, self.dirs)
        sealed = repo.key.seal(compress(marshal.dumps(payload), 1))
        if cache.put_own(_KIND, snapshot_id, sealed):
            cache.trim_own(_KIND, _KEEP)
