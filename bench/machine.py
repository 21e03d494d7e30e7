"""What the benchmark ran on: CPU, cores, memory, kernel, disk and the tools' versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def describe(workdir: Path) -> dict[str, Any]:
    import zstandard  # cairn's zstd binding
    from cryptography.hazmat.backends.openssl import backend

    df = _out(["df", "-hT", str(workdir)]).splitlines()
    dev = df[-1].split()[0] if len(df) > 1 else "?"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _mem_total(),
        "kernel": platform.release(),
        "filesystem": df[-1] if df else "?",
        "disk": _out(["lsblk", "-dno", "NAME,SIZE,ROTA,MODEL", dev]),
        "cairn": _out(["cairn", "version"]),
        "restic": _out(["/usr/bin/restic", "version"]),
        "borg": _out(["sh", "-c", "command -v borg && borg --version"]) or "not installed",
        "python": sys.version.split()[0],
        "openssl (cryptography)": backend.openssl_version_text(),
        "zstd": "libzstd {} (python-zstandard {})".format(
            ".".join(map(str, zstandard.ZSTD_VERSION)), zstandard.__version__
        ),
    }
