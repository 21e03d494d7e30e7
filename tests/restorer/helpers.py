"""Shared helpers for restore tests: open fixture repos, describe restored trees, compare
them with the fixtures' expected dataset descriptions."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cairn.backend.local import LocalBackend
from cairn.repo.repository import Repository
from tests.conftest import EXPECTED, FIXTURE_PASSWORD

#: what restic 0.14 excluded when it wrote the v1 fixture repository (make_fixtures.sh)
V1_EXCLUDED = {
    b"big",
    b"random-300KiB.bin",
    b"periodic-9MiB.bin",
    b"exact-512KiB.bin",
    b"min-plus-one.bin",
}

#: snapshot (prefix) -> which dataset it holds, per fixture repository
SNAPSHOT_DATASETS = {
    "v2": {"495607a5": ("1", False), "8ee9dcc7": ("2", False), "8a3da37d": ("stdin", False)},
    "v1": {"326fa8a1": ("1", True)},
    "v1-upgraded": {"326fa8a1": ("1", True), "b1afaba0": ("2", True)},
}

STDIN_CONTENT = "".join(f"line {i:04d} of the stdin snapshot\n" for i in range(200)).encode()


def open_repo(path: Path | str, password: str = FIXTURE_PASSWORD) -> Repository:
    return Repository.open(LocalBackend(str(path)), password)


def expected_dataset(variant: str, reduced: bool) -> dict[bytes, dict[str, Any]]:
    """The fixture's description of dataset ``variant`` keyed by raw relative path."""
    if variant == "stdin":
        return {
            b"stdin-data.txt": {
                "type": "file",
                "size": len(STDIN_CONTENT),
                "sha256": hashlib.sha256(STDIN_CONTENT).hexdigest(),
                "mode_octal": "0o100644",
            }
        }
    entries = json.loads((EXPECTED / f"dataset-variant{variant}.json").read_text())
    out: dict[bytes, dict[str, Any]] = {}
    for e in entries:
        path = bytes.fromhex(e["path_hex"])
        if reduced and V1_EXCLUDED & set(path.split(b"/")):
            continue
        out[path] = e
    return out


def sha256_file(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def scan(root: Path | str) -> dict[bytes, os.stat_result]:
    """Every entry below ``root`` (relative raw paths) with its lstat."""
    rootb = os.fsencode(root)
    out: dict[bytes, os.stat_result] = {}
    for dp, dns, fns in os.walk(rootb):
        for n in dns + fns:
            full = os.path.join(dp, n)
            out[os.path.relpath(full, rootb)] = os.lstat(full)
    return out


def compare_with_dataset(root: Path | str, expected: dict[bytes, dict[str, Any]]) -> list[str]:
    """Differences between the restored tree at ``root`` and the expected description:
    names (bytes), types, modes incl. setuid/setgid/sticky, mtimes (ns), sizes, SHA-256,
    symlink targets, xattrs, hard links."""
    problems: list[str] = []
    got = scan(root)
    rootb = os.fsencode(root)
    if set(got) != set(expected):
        problems.append(
            f"names differ: missing {sorted(set(expected) - set(got))}, "
            f"extra {sorted(set(got) - set(expected))}"
        )
    for rel, e in expected.items():
        st = got.get(rel)
        if st is None:
            continue
        full = os.path.join(rootb, rel)
        want_mode = int(e["mode_octal"], 8)
        if st.st_mode != want_mode:
            problems.append(f"{rel!r}: mode {oct(st.st_mode)} != {oct(want_mode)}")
        if "mtime_ns" in e and st.st_mtime_ns != e["mtime_ns"]:
            problems.append(f"{rel!r}: mtime {st.st_mtime_ns} != {e['mtime_ns']}")
        kind = e["type"]
        if kind == "file":
            if st.st_size != e["size"]:
                problems.append(f"{rel!r}: size {st.st_size} != {e['size']}")
            elif sha256_file(full) != e["sha256"]:
                problems.append(f"{rel!r}: content differs")
        elif kind == "symlink":
            target = bytes.fromhex(e["target_hex"])
            # restic 0.14 stores a non-UTF-8 target lossily (spec §9.2): \xff -> U+FFFD
            lossy = target.decode("utf-8", "replace").encode()
            if os.readlink(full) != lossy:
                problems.append(f"{rel!r}: link target {os.readlink(full)!r} != {lossy!r}")
        elif kind == "other" and stat.S_ISFIFO(want_mode) and not stat.S_ISFIFO(st.st_mode):
            problems.append(f"{rel!r}: not a FIFO")
        if kind != "symlink":
            want_x = {k: bytes.fromhex(v) for k, v in e.get("xattrs", {}).items()}
            have_x = {
                n: os.getxattr(full, n, follow_symlinks=False)
                for n in os.listxattr(full, follow_symlinks=False)
                if n.startswith("user.")
            }
            if have_x != want_x:
                problems.append(f"{rel!r}: xattrs {have_x} != {want_x}")
    a, b = got.get(b"links/hardlink-a"), got.get(b"links/hardlink-b")
    if a is not None and b is not None and (a.st_ino != b.st_ino or a.st_nlink != 2):
        problems.append("links/hardlink-a and hardlink-b are not one inode with two names")
    return problems


def snapshot_id(repo: Repository, prefix: str) -> str:
    return next(s for s in repo.list_snapshots() if s.startswith(prefix))


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of a (read-only) repository file in place."""
    path.chmod(0o600)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
