"""Snapshots: the JSON that names a backup's root tree (spec §10), and restic's rules for
finding one ("latest" by time with host/path/tag filters, or a unique ID prefix)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cairn.errors import FormatError, SnapshotNotFoundError
from cairn.repo.gojson import format_time, go_string, parse_time
from cairn.repo.node import GoTime

#: Fields restic 0.14-0.19 knows, in its output order.
_KNOWN = (
    "time",
    "parent",
    "tree",
    "paths",
    "hostname",
    "username",
    "uid",
    "gid",
    "excludes",
    "tags",
    "original",
    "program_version",
    "summary",
)


def go_json(value: object) -> str:
    """Compact Go-style JSON of a decoded JSON value (used for fields we carry through)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_string(str(k))}:{go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _str_list(items: Sequence[str]) -> str:
    return "[" + ",".join(go_string(s) for s in items) + "]"


@dataclass
class Snapshot:
    """One snapshot. ``tree`` is the raw 32-byte root tree ID; ``parent``/``original`` are
    hex IDs. ``extra`` keeps fields this version does not know, so a rewrite preserves them."""

    time: GoTime
    tree: bytes
    paths: list[str]
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    original: str | None = None
    program_version: str = ""
    summary: dict[str, object] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def encode(self) -> bytes:
        """restic's compact JSON: struct order, omitempty rules, no trailing newline."""
        parts = [f'"time":"{format_time(self.time)}"']
        if self.parent:
            parts.append(f'"parent":"{self.parent}"')
        parts.append(f'"tree":"{self.tree.hex()}"')
        parts.append(f'"paths":{_str_list(self.paths)}')
        if self.hostname:
            parts.append(f'"hostname":{go_string(self.hostname)}')
        if self.username:
            parts.append(f'"username":{go_string(self.username)}')
        if self.uid:
            parts.append(f'"uid":{self.uid}')
        if self.gid:
            parts.append(f'"gid":{self.gid}')
        if self.excludes:
            parts.append(f'"excludes":{_str_list(self.excludes)}')
        if self.tags:
            parts.append(f'"tags":{_str_list(self.tags)}')
        if self.original:
            parts.append(f'"original":"{self.original}"')
        if self.program_version:
            parts.append(f'"program_version":{go_string(self.program_version)}')
        if self.summary is not None:
            parts.append(f'"summary":{go_json(self.summary)}')
        for k, v in self.extra.items():
            parts.append(f"{go_string(k)}:{go_json(v)}")
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        """Parse a snapshot (unknown fields land in ``extra``)."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            tree = bytes.fromhex(doc["tree"])
            if len(tree) != 32:
                raise ValueError("tree ID is not 32 bytes")
            summary = doc.get("summary")
            return cls(
                time=parse_time(doc["time"]),
                tree=tree,
                paths=[str(p) for p in doc.get("paths") or []],
                hostname=str(doc.get("hostname") or ""),
                username=str(doc.get("username") or ""),
                uid=int(doc.get("uid") or 0),
                gid=int(doc.get("gid") or 0),
                excludes=[str(p) for p in doc.get("excludes") or []],
                tags=[str(p) for p in doc.get("tags") or []],
                parent=doc.get("parent") or None,
                original=doc.get("original") or None,
                program_version=str(doc.get("program_version") or ""),
                summary=summary if isinstance(summary, dict) else None,
                extra={k: v for k, v in doc.items() if k not in _KNOWN},
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"invalid snapshot: {e}") from e

    def has_tags(self, tag_lists: Sequence[str]) -> bool:
        """restic's tag filter: each entry is a comma-separated list that must be fully
        present; any one entry matching is enough; no entries matches everything."""
        if not tag_lists:
            return True
        mine = set(self.tags)
        for entry in tag_lists:
            wanted = {t for t in entry.split(",") if t}
            if wanted <= mine:
                return True
        return False

    def matches(
        self, hosts: Sequence[str] = (), paths: Sequence[str] = (), tags: Sequence[str] = ()
    ) -> bool:
        """restic's snapshot filter (host in list, all given paths present, tags)."""
        if hosts and self.hostname not in hosts:
            return False
        if paths and not set(paths) <= set(self.paths):
            return False
        return self.has_tags(tags)


def resolve_prefix(ref: str, names: Iterable[str]) -> str:
    """The one name starting with ``ref``; SnapshotNotFoundError for none or several."""
    ref = ref.lower()
    found = [n for n in names if n.startswith(ref)]
    if not found:
        raise SnapshotNotFoundError(f"no snapshot matches ID {ref!r}")
    if len(found) > 1 and ref not in found:
        raise SnapshotNotFoundError(
            f"snapshot ID prefix {ref!r} is ambiguous ({len(found)} snapshots match); "
            f"give more digits"
        )
    return ref if ref in found else found[0]


def latest(
    snapshots: Iterable[tuple[str, Snapshot]],
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> tuple[str, Snapshot]:
    """The newest snapshot (by time) that passes the filters."""
    best: tuple[str, Snapshot] | None = None
    for sid, snap in snapshots:
        if not snap.matches(hosts, paths, tags):
            continue
        if best is None or snap.time.to_ns() > best[1].time.to_ns():
            best = (sid, snap)
    if best is None:
        what = []
        if hosts:
            what.append(f"host {', '.join(hosts)}")
        if paths:
            what.append(f"paths {', '.join(paths)}")
        if tags:
            what.append(f"tags {' or '.join(tags)}")
        suffix = f" with {'; '.join(what)}" if what else ""
        raise SnapshotNotFoundError(f"no snapshot found{suffix}")
    return best
