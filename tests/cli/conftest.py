"""Fixtures for running the real ``cairn`` command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
    # Keep each test's metadata cache beside its repository, never in ~/.cache.
    local = repo is not None and ":" not in str(repo).split("/", 1)[0]
    cache = Path(str(repo)).parent if local else Path(tempfile.gettempdir())
    env["CAIRN_CACHE_DIR"] = str(cache / ".cairn-cache")
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
    if env and {"HOME", "XDG_CACHE_HOME", "RESTIC_CACHE_DIR", "CAIRN_CACHE_DIR"} & set(env):
        del full_env["CAIRN_CACHE_DIR"]  # the test chooses the cache location itself
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
