"""Finding an entry by path inside a snapshot's trees (``SNAPSHOT:sub/dir``, ``ls SNAP DIR``)."""

from __future__ import annotations

import os

from cairn.errors import PathNotFoundError
from cairn.repo.node import Node
from cairn.repo.repository import Repository


def lookup_path(repo: Repository, tree_id: bytes, subpath: str | bytes) -> Node | None:
    """The node at ``subpath`` ("/"-separated, relative to the tree ``tree_id``); None for
    the tree itself (an empty path). PathNotFoundError when a component is missing or a
    non-directory stands in the middle of the path."""
    node: Node | None = None
    current = tree_id
    walked = b""
    for comp in os.fsencode(subpath).split(b"/"):
        if comp in (b"", b"."):
            continue
        if node is not None:
            if node.type != "dir" or node.subtree is None:
                raise PathNotFoundError(f"{os.fsdecode(walked)} in the snapshot is not a directory")
            current = node.subtree
        walked += b"/" + comp
        node = next((n for n in repo.load_tree(current) if n.name == comp), None)
        if node is None:
            raise PathNotFoundError(f"path {os.fsdecode(walked)} not found in the snapshot")
    return node


def subtree_at(repo: Repository, tree_id: bytes, subpath: str | bytes) -> bytes:
    """The tree ID of the directory at ``subpath``."""
    node = lookup_path(repo, tree_id, subpath)
    if node is None:
        return tree_id
    if node.type != "dir" or node.subtree is None:
        raise PathNotFoundError(f"{os.fsdecode(subpath)} in the snapshot is not a directory")
    return node.subtree
