"""Does a restored tree equal its source? Names, types, sizes, modes, mtimes (files,
directories and symlinks), symlink targets and file contents by SHA-256."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: relative path -> (kind, mode bits, size, mtime_ns, symlink target or SHA-256 hex)
Entry = tuple[str, int, int, int, str]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def snapshot(root: Path, workers: int = 2) -> dict[str, Entry]:
    """Describe every entry below ``root`` (not ``root`` itself)."""
    entries: dict[str, Entry] = {}
    to_hash: list[tuple[str, str]] = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", 0, 0, st.st_mtime_ns, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", mode, 0, st.st_mtime_ns, "")
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", mode, st.st_size, st.st_mtime_ns, "")
                to_hash.append((rel, path))
            else:
                entries[rel] = ("other", mode, 0, st.st_mtime_ns, "")
    with ThreadPoolExecutor(workers) as pool:
        for (rel, _), digest in zip(
            to_hash, pool.map(lambda rp: _sha256(rp[1]), to_hash), strict=True
        ):
            kind, mode, size, mtime, _ = entries[rel]
            entries[rel] = (kind, mode, size, mtime, digest)
    return entries


def compare(source: dict[str, Entry], restored: dict[str, Entry], limit: int = 10) -> list[str]:
    """Differences, as short messages (at most ``limit`` plus a count)."""
    problems: list[str] = []
    for rel in sorted(source.keys() - restored.keys()):
        problems.append(f"missing: {rel}")
    for rel in sorted(restored.keys() - source.keys()):
        problems.append(f"extra: {rel}")
    fields = ("type", "mode", "size", "mtime", "content/target")
    for rel in sorted(source.keys() & restored.keys()):
        a, b = source[rel], restored[rel]
        if a != b:
            diff = [f"{f} {x!r} != {y!r}" for f, x, y in zip(fields, a, b, strict=True) if x != y]
            problems.append(f"differs: {rel}: {', '.join(diff)}")
    if len(problems) > limit:
        return [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems
