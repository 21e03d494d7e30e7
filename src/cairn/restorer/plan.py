"""Walk a snapshot's trees and decide what a restore creates (restic 0.14 semantics).

The root tree's entries go directly under the target. Selection follows restic's restore
filters: with exclude patterns a node is restored unless it matches (and an excluded
directory is not entered); with include patterns a node is restored when it matches, a
directory is entered when something below it may match, and a directory is created when
it is selected or anything below it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cairn.errors import RestoreError, UsageError
from cairn.filter import PatternList
from cairn.repo.node import Node

if TYPE_CHECKING:
    from cairn.repo.repository import Repository


@dataclass(slots=True)
class FileEntry:
    """A regular file to restore. ``link_to`` is the index of an earlier entry when this
    name is a hard link of it (same ``device_id``/``inode``, ``links > 1``)."""

    path: bytes  # relative to the target, "/"-separated raw bytes
    node: Node
    link_to: int | None = None


@dataclass
class Plan:
    """Everything a restore creates, in tree order (parents before children)."""

    dirs: list[tuple[bytes, Node]] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    #: symlinks, fifos, devices, sockets
    others: list[tuple[bytes, Node]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.node.size for f in self.files if f.link_to is None)


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
            entry = FileEntry(path, node)
            if node.links > 1:
                key = (node.device_id, node.inode)
                first = first_link.get(key)
                if first is None:
                    first_link[key] = len(plan.files)
                else:
                    entry.link_to = first
            plan.files.append(entry)
        else:
            plan.others.append((path, node))
    plan.dirs = [d for d in dirs if d is not None]
    return plan
