"""Known answers: every snapshot of the three restic-written fixture repositories restores
to exactly the dataset make_dataset.py produced (spec §19 check 3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cairn.ops.restore import restore
from tests.restorer.helpers import (
    SNAPSHOT_DATASETS,
    compare_with_dataset,
    expected_dataset,
    open_repo,
)

pytestmark = pytest.mark.usefixtures("content_writers")

CASES = [(repo, prefix) for repo, snaps in SNAPSHOT_DATASETS.items() for prefix in snaps]


@pytest.mark.parametrize(("repo_name", "prefix"), CASES)
def test_restore_every_fixture_snapshot(
    fixture_repo: Any, tmp_path: Path, repo_name: str, prefix: str
) -> None:
    repo = open_repo(fixture_repo(repo_name))
    target = tmp_path / "out"
    progress: list[Any] = []
    try:
        result = restore(repo, prefix, str(target), verify=True, progress=progress.append)
    finally:
        repo.close()
    assert result.errors == []
    assert result.snapshot_id.startswith(prefix)
    variant, reduced = SNAPSHOT_DATASETS[repo_name][prefix]
    expected = expected_dataset(variant, reduced)
    assert compare_with_dataset(target, expected) == []
    n_files = sum(1 for e in expected.values() if e["type"] == "file")
    assert result.files == n_files
    assert result.verified_files == n_files - (1 if b"links/hardlink-b" in expected else 0)
    assert result.bytes_written == sum(
        e["size"] for p, e in expected.items() if e["type"] == "file" and p != b"links/hardlink-b"
    )
    last_content = [p for p in progress if p.phase == "content"][-1]
    assert last_content.bytes_done == last_content.bytes_total == result.bytes_written


def test_restore_overwrites_existing_files(fixture_repo: Any, tmp_path: Path) -> None:
    """restic 0.14 overwrites: a second restore into the same target gives the same tree,
    also where a file was replaced by a symlink or had different content."""
    repo = open_repo(fixture_repo("v1"))
    target = tmp_path / "out"
    try:
        assert restore(repo, "latest", str(target)).errors == []
        (target / "README.txt").write_bytes(b"changed")
        os.remove(target / "empty-file")
        os.symlink("/etc/passwd", target / "empty-file")
        result = restore(repo, "latest", str(target))
    finally:
        repo.close()
    assert result.errors == []
    assert compare_with_dataset(target, expected_dataset("1", reduced=True)) == []
