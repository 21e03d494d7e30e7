"""Shared test fixtures: the restic-written fixture repositories and the real restic binary."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

#: Server fixtures used by several test packages are registered once, so that session
#: scope means one server per test run (radosgw takes ~15 s to start).
pytest_plugins = ["tests.backend.radosgw"]

ROOT = Path(__file__).resolve().parent.parent
#: ../shared beside the checkout (CI clones main with shared/ next to it).
SHARED = Path(os.environ.get("CAIRN_SHARED_DIR", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
EXPECTED = FIXTURES / "expected"
FIXTURE_PASSWORD = "fixture-password"
SECOND_PASSWORD = "second-password"

#: Cheap scrypt parameters for repositories created by tests (restic accepts any valid set);
#: production keys are calibrated like restic's.
TEST_KDF = (1024, 8, 1)


def _make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        with contextlib.suppress(OSError):
            p.chmod(p.stat().st_mode | 0o700 if p.is_dir() else p.stat().st_mode | 0o600)


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Callable[[str], Path]:
    """Extract one of the restic-written fixture repositories ("v2", "v1", "v1-upgraded")
    into a fresh temporary directory and return its path."""

    def extract(name: str) -> Path:
        tar = FIXTURES / f"restic-repo-{name}.tar"
        dest = tmp_path / f"repo-{name}"
        dest.mkdir()
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="tar")
        entries = list(dest.iterdir())
        repo = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
        _make_writable(repo)
        return repo

    return extract


def restic_path() -> str:
    path = shutil.which("restic")
    if path is None:
        pytest.fail("the restic binary is required (scripts/test.sh installs it)")
    return path


def run_restic(
    repo: str | Path,
    *args: str,
    password: str = "pw",
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real restic against ``repo`` with ``password``; output is captured.
    ``check`` raises with restic's output when it exits non-zero."""
    full_env = dict(os.environ, RESTIC_PASSWORD=password)
    full_env.pop("RESTIC_REPOSITORY", None)
    full_env.setdefault("RESTIC_CACHE_DIR", str(Path(repo).parent / ".restic-cache"))
    full_env.update(env or {})
    proc = subprocess.run(
        [restic_path(), "-r", str(repo), *args],
        capture_output=True,
        env=full_env,
        cwd=cwd,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"restic {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures' deterministic dataset (variant 1), generated once per session."""
    root = tmp_path_factory.mktemp("dataset") / "dataset"
    subprocess.run(
        [sys.executable, str(FIXTURES / "make_dataset.py"), str(root), "--variant", "1"],
        check=True,
        capture_output=True,
    )
    return root


def spy_on_pools(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[int]:
    """Record the worker count of every ``PipePool`` that ``module`` starts (the pools
    still start and work): proves which of a step's two ways ran."""
    started: list[int] = []
    real = module.PipePool

    def spy(fn: Any, workers: int) -> Any:
        started.append(workers)
        return real(fn, workers)

    monkeypatch.setattr(module, "PipePool", spy)
    return started
