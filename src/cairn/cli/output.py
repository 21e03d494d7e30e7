"""Rendering for people (tables, sizes, Go-style mode strings) and for machines (JSON)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from cairn.repo.node import (
    MODE_CHARDEV,
    MODE_DEVICE,
    MODE_DIR,
    MODE_IRREGULAR,
    MODE_NAMED_PIPE,
    MODE_SETGID,
    MODE_SETUID,
    MODE_SOCKET,
    MODE_STICKY,
    MODE_SYMLINK,
    GoTime,
)

# Go's FileMode.String(): one letter per type bit, in this order, then rwxrwxrwx.
_TYPE_LETTERS = [
    (MODE_DIR, "d"),
    (1 << 30, "a"),
    (1 << 29, "l"),
    (1 << 28, "T"),
    (MODE_SYMLINK, "L"),
    (MODE_DEVICE, "D"),
    (MODE_NAMED_PIPE, "p"),
    (MODE_SOCKET, "S"),
    (MODE_SETUID, "u"),
    (MODE_SETGID, "g"),
    (MODE_CHARDEV, "c"),
    (MODE_STICKY, "t"),
    (MODE_IRREGULAR, "?"),
]


def mode_string(mode: int) -> str:
    """Go's ``os.FileMode.String()``, as ``restic ls -l`` prints it."""
    letters = "".join(ch for bit, ch in _TYPE_LETTERS if mode & bit) or "-"
    perm = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return letters + perm


def local_time(t: GoTime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A timestamp in the viewer's local zone."""
    try:
        return time.strftime(fmt, time.localtime(t.sec))
    except (OverflowError, OSError, ValueError):
        return "?"


def human_size(n: float) -> str:
    """restic-style sizes: 1.234 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n:.3f} PiB"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip(), line]
    out.extend(fmt.format(*row).rstrip() for row in rows)
    out.append(line)
    return "\n".join(out)


def print_json(doc: object) -> None:
    """One compact JSON document per line on stdout."""
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_bytes(data: bytes) -> None:
    """Raw bytes to stdout (file names need not be UTF-8)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
