"""Walk a snapshot's trees and decide what a restore creates (restic 0.14 semantics).

The root tree's entries go directly under the target. Selection follows restic's restore
filters: with exclude patterns a node is restored unless it matches (and an excluded
directory is not entered); with include patterns a node is restored when it matches, a
directory is entered when something below it may match, and a directory is created when
it is selected or anything below it is.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cairn.errors import RestoreError, UsageError
from cairn.filter import PatternList
from cairn.repo.node import ExtendedAttribute, Node

if TYPE_CHECKING:
    from cairn.repo.repository import Repository


#: a file's metadata as :func:`cairn.restorer.metadata.set_metadata` takes it:
#: uid, gid, extended attributes, permission bits, atime and mtime in nanoseconds
FileMeta = tuple[int, int, list[ExtendedAttribute], int, int, int]

_NO_XATTRS: list[ExtendedAttribute] = []
_ID_SIZE = 32


class FileTable:
    """The regular files a restore writes, numbered in tree order, kept compactly: a file
    costs its path, its blob IDs (32 bytes each) and about 60 bytes in arrays, where a
    :class:`Node` per file cost ~500 bytes (59 MB for 100,000 files). The arrays are also
    what forked restore workers read without copying the pages they sit in (reading an
    object would write its reference count)."""

    def __init__(self) -> None:
        #: relative to the target, "/"-separated raw bytes
        self.paths: list[bytes] = []
        self.sizes = array("q")
        #: file number -> the earlier file it is a hard link of (same inode, links > 1)
        self.link_to: dict[int, int] = {}
        self._uid = array("q")
        self._gid = array("q")
        self._perm = array("H")
        #: atime seconds, atime nanoseconds, mtime seconds, mtime nanoseconds per file
        self._times = array("q")
        self._xattrs: dict[int, list[ExtendedAttribute]] = {}
        #: owners outside what the arrays hold (a damaged tree); the arrays then hold 0
        self._odd_owner: dict[int, tuple[int, int]] = {}
        #: file f's blob IDs are ``_ids[32 * _starts[f] : 32 * _starts[f + 1]]``
        self._starts = array("q", [0])
        self._ids = bytearray()

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: bytes, node: Node) -> int:
        """Append a file; returns its number."""
        f = len(self.paths)
        content = node.content or ()
        for bid in content:
            if len(bid) != _ID_SIZE:
                raise RestoreError(f"invalid blob ID in {os.fsdecode(path)}")
        self.paths.append(path)
        self.sizes.append(node.size)
        try:
            self._uid.append(node.uid)
            self._gid.append(node.gid)
        except OverflowError:
            self._uid.append(0)
            self._gid.append(0)
            self._odd_owner[f] = (node.uid, node.gid)
        self._perm.append(node.perm)
        self._times.extend((node.atime.sec, node.atime.nsec, node.mtime.sec, node.mtime.nsec))
        if node.extended_attributes:
            self._xattrs[f] = node.extended_attributes
        self._ids += b"".join(content)
        self._starts.append(self._starts[f] + len(content))
        return f

    def content(self, f: int) -> list[bytes]:
        """File ``f``'s data blob IDs, in order."""
        ids = self._ids
        return [
            bytes(ids[i : i + _ID_SIZE])
            for i in range(_ID_SIZE * self._starts[f], _ID_SIZE * self._starts[f + 1], _ID_SIZE)
        ]

    def meta(self, f: int) -> FileMeta:
        uid, gid = self._odd_owner.get(f) or (self._uid[f], self._gid[f])
        t = self._times
        atime = t[4 * f] * 1_000_000_000 + t[4 * f + 1]
        mtime = t[4 * f + 2] * 1_000_000_000 + t[4 * f + 3]
        return uid, gid, self._xattrs.get(f, _NO_XATTRS), self._perm[f], atime, mtime

    @property
    def total_bytes(self) -> int:
        """Bytes of content to write: every file once, hard links not again."""
        total = sum(self.sizes)
        return total - sum(self.sizes[f] for f in self.link_to)


@dataclass
class Plan:
    """Everything a restore creates, in tree order (parents before children)."""

    dirs: list[tuple[bytes, Node]] = field(default_factory=list)
    files: FileTable = field(default_factory=FileTable)
    #: symlinks, fifos, devices, sockets
    others: list[tuple[bytes, Node]] = field(default_factory=list)


class Selector:
    """restic's restore selection for include xor exclude patterns."""

    def __init__(self, include: Iterable[str | bytes] = (), exclude: Iterable[str | bytes] = ()):
        self.include = PatternList(include)
        self.exclude = PatternList(exclude)
        if self.include and self.exclude:
            raise UsageError("exclude and include patterns are mutually exclusive")

    def select(self, location: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this node, descend into it) for the snapshot path ``location``."""
        if self.exclude:
            matched, _ = self.exclude.matches(location)
            return not matched, (not matched) and is_dir
        if self.include:
            matched, child = self.include.matches(location)
            return matched, child and is_dir
        return True, is_dir


def build_plan(repo: Repository, tree_id: bytes, selector: Selector) -> Plan:
    """Walk the trees below ``tree_id`` (iteratively: trees may nest deeper than Python's
    recursion limit) and collect the selected nodes."""
    plan = Plan()
    dirs: list[tuple[bytes, Node] | None] = []
    first_link: dict[tuple[int, int], int] = {}

    @dataclass
    class Frame:
        nodes: Iterator[Node]
        tree: bytes
        rel: bytes
        slot: int  # index in ``dirs`` of this directory, -1 for the root
        selected: bool
        restored_any: bool = False

    stack = [Frame(iter(repo.load_tree(tree_id)), tree_id, b"", -1, True)]
    while stack:
        frame = stack[-1]
        node = next(frame.nodes, None)
        if node is None:
            stack.pop()
            if frame.slot >= 0 and not (frame.selected or frame.restored_any):
                dirs[frame.slot] = None  # entered for a possible match, nothing below
            if stack and (frame.selected or frame.restored_any):
                stack[-1].restored_any = True
            continue
        name = node.name
        if not name or name in (b".", b"..") or b"/" in name:
            # A hostile or broken tree must not make us write outside the target.
            raise RestoreError(f"invalid file name {name!r} in tree {frame.tree.hex()[:16]}")
        path = frame.rel + b"/" + name if frame.rel else name
        location = b"/" + path
        is_dir = node.type == "dir"
        selected, descend = selector.select(location, is_dir)
        if is_dir:
            if node.subtree is None:
                raise RestoreError(f"directory {os.fsdecode(location)} has no subtree")
            if descend:
                dirs.append((path, node))
                nodes = iter(repo.load_tree(node.subtree))
                stack.append(Frame(nodes, node.subtree, path, len(dirs) - 1, selected))
            elif selected:
                dirs.append((path, node))
                frame.restored_any = True
            continue
        if not selected:
            continue
        frame.restored_any = True
        if node.type == "file":
            f = plan.files.add(path, node)
            if node.links > 1:
                key = (node.device_id, node.inode)
                first = first_link.setdefault(key, f)
                if first != f:
                    plan.files.link_to[f] = first
        else:
            plan.others.append((path, node))
    plan.dirs = [d for d in dirs if d is not None]
    return plan
