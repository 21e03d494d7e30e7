"""Fixtures for running the real ``cairn`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import TEST_KDF

CairnRunner = Callable[..., subprocess.CompletedProcess[bytes]]


def cairn_env(repo: str | Path | None = None, password: str = "pw", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "RESTIC_"))}
    env["CAIRN_PASSWORD"] = password
    env["CAIRN_KDF_PARAMS"] = ",".join(str(x) for x in TEST_KDF)
    if repo is not None:
        env["CAIRN_REPOSITORY"] = str(repo)
    env.update(extra)
    return env


def run_cairn(
    *args: str,
    repo: str | Path | None = None,
    password: str = "pw",
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    expect: int | None = 0,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cairn`` as a user would; ``expect`` is the exit code to insist on (None: any)."""
    full_env = cairn_env(repo, password)
    full_env.update(env or {})
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "cairn", *args],
        capture_output=True,
        env=full_env,
        input=input,
        cwd=cwd,
        timeout=300,
    )
    if expect is not None and proc.returncode != expect:
        raise AssertionError(
            f"cairn {' '.join(args)} exited {proc.returncode}, expected {expect}:\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}"
        )
    return proc
