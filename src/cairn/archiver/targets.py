"""Arrange backup targets into the snapshot's root tree, as restic does (spec §9.4).

``backup .`` stores the directory's contents at the root; a relative target keeps its
relative components (``backup d2`` gives a root with one node ``d2``); an absolute target
gets one directory node per leading component (``/home/u/docs`` -> home -> u -> docs).
Several targets merge into one tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cairn.errors import SourceError


@dataclass
class VirtualDir:
    """A directory of the snapshot's tree above (or at) the real targets."""

    #: The real directory whose metadata this node carries (for intermediate components).
    real_path: bytes
    children: dict[bytes, VirtualDir | Target] = field(default_factory=dict)
    #: Set when this directory itself is a target (``backup .``): walk it entirely.
    target: Target | None = None


@dataclass
class Target:
    """A real path the user named; walked in full."""

    path: bytes  # absolute, as accessed
    name: bytes  # name of its node in the tree


def snapshot_paths(targets: list[str]) -> list[str]:
    """The absolute, cleaned paths recorded in the snapshot."""
    return [os.path.normpath(os.path.abspath(t)) for t in targets]


def build_layout(targets: list[str], cwd: str | None = None) -> VirtualDir:
    """The tree skeleton for ``targets``; raises SourceError for a missing target."""
    base = os.fsencode(cwd or os.getcwd())
    root = VirtualDir(real_path=b"/")
    for t in targets:
        bt = os.fsencode(t)
        absolute = os.path.normpath(os.path.join(base, bt))
        if not os.path.lexists(absolute):
            raise SourceError(f"{t}: no such file or directory")
        if os.path.isabs(bt) or bt.startswith(b".."):
            comps = [c for c in absolute.split(b"/") if c]
            anchor = b"/"
        else:
            rel = os.path.normpath(bt)
            comps = [] if rel == b"." else [c for c in rel.split(b"/") if c]
            anchor = base
        if not comps:
            if root.children or root.target:
                raise SourceError(f"{t}: cannot combine the current directory with other targets")
            root.real_path = absolute
            root.target = Target(absolute, b"")
            continue
        if root.target:
            raise SourceError(f"{t}: cannot combine the current directory with other targets")
        node = root
        node.real_path = anchor
        real = anchor
        for comp in comps[:-1]:
            real = os.path.join(real, comp)
            child = node.children.get(comp)
            if isinstance(child, Target):
                break  # an ancestor is itself a target: it covers this one
            if child is None:
                child = node.children[comp] = VirtualDir(real_path=real)
            node = child
        else:
            last = comps[-1]
            if last in node.children and isinstance(node.children[last], Target):
                continue  # the same target twice
            node.children[last] = Target(absolute, last)
    return root
