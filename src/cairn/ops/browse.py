"""Read-only views of a repository: ``snapshots``, ``ls`` and ``cat``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cairn.backend.base import FileType, Handle
from cairn.errors import CairnError, SnapshotNotFoundError, UsageError
from cairn.repo.ids import BlobType
from cairn.repo.keys import encode_master_key
from cairn.repo.node import Node
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.repo.treepath import lookup_path


def load_snapshots(
    repo: Repository,
    *,
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
    ids: Sequence[str] = (),
) -> list[tuple[str, Snapshot]]:
    """Snapshots passing restic's filters, oldest first. ``ids`` may be prefixes or
    "latest"; unreadable snapshot files are skipped only when listing everything."""
    if ids:
        out = [repo.find_snapshot(ref, hosts=hosts, paths=paths, tags=tags) for ref in ids]
    else:
        names = repo.list_snapshots()
        with ThreadPoolExecutor(max(2, repo.backend.connections)) as pool:
            loaded = list(pool.map(_try_load, [repo] * len(names), names))
        out = [(sid, s) for sid, s in zip(names, loaded, strict=True) if s is not None]
        out = [(sid, s) for sid, s in out if s.matches(hosts, paths, tags)]
    out.sort(key=lambda item: (item[1].time.to_ns(), item[0]))
    return out


def _try_load(repo: Repository, sid: str) -> Snapshot | None:
    try:
        return repo.load_snapshot(sid)
    except CairnError:
        return None


def keep_latest(snaps: list[tuple[str, Snapshot]], n: int) -> list[tuple[str, Snapshot]]:
    """restic's ``--latest N``: the newest N per (host, paths) group."""
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[str, Snapshot]]] = {}
    for item in snaps:
        key = (item[1].hostname, tuple(sorted(item[1].paths)))
        groups.setdefault(key, []).append(item)
    out: list[tuple[str, Snapshot]] = []
    for items in groups.values():
        out.extend(items[-n:])
    out.sort(key=lambda item: (item[1].time.to_ns(), item[0]))
    return out


def snapshot_json(sid: str, snap: Snapshot) -> dict[str, object]:
    """A snapshot as ``restic snapshots --json`` shows it (stored fields + id, short_id)."""
    doc: dict[str, object] = json.loads(snap.encode())
    doc["id"] = sid
    doc["short_id"] = sid[:8]
    return doc


@dataclass
class Entry:
    """One node of a walked tree with its full path inside the snapshot."""

    path: bytes
    node: Node


def walk(
    repo: Repository, tree: bytes, prefix: bytes = b"", *, recursive: bool = True
) -> Iterator[Entry]:
    """Depth-first, in tree order (sorted by name), like restic's ``ls``."""
    for node in repo.load_tree(tree):
        path = prefix + b"/" + node.name
        yield Entry(path, node)
        if recursive and node.type == "dir" and node.subtree is not None:
            yield from walk(repo, node.subtree, path, recursive=True)


def list_nodes(
    repo: Repository, snap: Snapshot, dirs: Sequence[str] = (), *, recursive: bool = False
) -> Iterator[Entry]:
    """``ls``: everything when no ``dirs`` are given; otherwise the listed directories'
    entries (and below with ``recursive``)."""
    if not dirs:
        yield from walk(repo, snap.tree)
        return
    for d in dirs:
        path = b"/" + os.fsencode(d).strip(b"/") if d.strip("/") else b""
        node = lookup_path(repo, snap.tree, path)
        if node is None:
            yield from walk(repo, snap.tree, b"", recursive=recursive)
        elif node.type == "dir" and node.subtree is not None:
            yield from walk(repo, node.subtree, path, recursive=recursive)
        else:
            yield Entry(path, node)


CAT_KINDS = ("config", "masterkey", "key", "snapshot", "index", "lock", "tree", "blob", "pack")


def cat(repo: Repository, kind: str, ref: str | None) -> bytes:
    """The stored content of one object, decrypted (JSON pretty-printed where restic does)."""
    if kind not in CAT_KINDS:
        raise UsageError(f"cannot cat {kind!r}: expected one of {', '.join(CAT_KINDS)}")
    if kind == "config":
        return _pretty(repo.config.encode())
    if kind == "masterkey":
        return _pretty(encode_master_key(repo.key))
    if ref is None:
        raise UsageError(f"cat {kind} needs an ID")
    if kind == "snapshot":
        sid, snap = repo.find_snapshot(ref)
        return _pretty(snap.encode())
    if kind in ("tree", "blob"):
        bid = _full_blob_id(repo, ref, BlobType.TREE if kind == "tree" else None)
        if kind == "tree":
            return _pretty(repo.load_blob(BlobType.TREE, bid))
        for t in (BlobType.DATA, BlobType.TREE):
            if repo.index.has(t, bid):
                return repo.load_blob(t, bid)
        raise SnapshotNotFoundError(f"blob {ref} not found in the index")
    ftype = {
        "key": FileType.KEY,
        "index": FileType.INDEX,
        "lock": FileType.LOCK,
        "pack": FileType.PACK,
    }[kind]
    name = _resolve_file(repo, ftype, ref)
    if ftype is FileType.PACK:
        return repo.backend.load(Handle(FileType.PACK, name))
    if ftype is FileType.KEY:
        return _pretty(repo.backend.load(Handle(FileType.KEY, name)))
    data = repo.load_file(ftype, name)
    return data if ftype is FileType.INDEX else _pretty(data)


def _pretty(data: bytes) -> bytes:
    return json.dumps(json.loads(data), indent=2, ensure_ascii=False).encode() + b"\n"


def _resolve_file(repo: Repository, ftype: FileType, ref: str) -> str:
    ref = ref.lower()
    found = [f.name for f in repo.backend.list(ftype) if f.name.startswith(ref)]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise UsageError(f"{what} {ftype.value} file matches {ref!r}")
    return found[0]


def _full_blob_id(repo: Repository, ref: str, t: BlobType | None) -> bytes:
    if len(ref) == 64:
        try:
            return bytes.fromhex(ref)
        except ValueError:
            pass
    raise UsageError(f"give the full 64-digit blob ID (got {ref!r})")
