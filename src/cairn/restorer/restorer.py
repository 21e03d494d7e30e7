"""Restore one tree of a snapshot into a target directory (restic 0.14 semantics).

Order: check the target, plan (walk the trees), create directories (owner-writable for
now), create symlinks/FIFOs/devices, write file content pack by pack, create hard links,
then metadata: files and special files first, directories last and deepest first so that
creating entries inside them cannot change their mtime afterwards.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cairn.errors import RestoreError
from cairn.restorer.metadata import apply_metadata, make_dir, make_special, remove_existing
from cairn.restorer.plan import FileTable, Plan, Selector, build_plan
from cairn.restorer.progress import ProgressCallback, ProgressTracker
from cairn.restorer.verify import verify_files
from cairn.restorer.writer import ContentWriter

if TYPE_CHECKING:
    from cairn.repo.repository import Repository


@dataclass
class RestoreReport:
    """What a restore did. ``errors`` name files that are missing or wrong; ``warnings``
    are metadata or special files that could not be applied (content is fine)."""

    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    failed_files: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verified_files: int = 0
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def check_target(target: str | bytes) -> bytes:
    """Create the target directory if needed and prove it is writable; RestoreError if
    not (before any work is done). Returns the absolute target as bytes."""
    path = os.path.abspath(os.fsencode(target))
    shown = os.fsdecode(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"cannot create restore target {shown}: {e.strerror}") from e
    if not os.path.isdir(path):
        raise RestoreError(f"restore target {shown} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=b".cairn-restore-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RestoreError(f"restore target {shown} is not writable: {e.strerror}") from e
    return path


def _join(target: bytes, rel: bytes) -> bytes:
    return target + b"/" + rel


def restore_tree(
    repo: Repository,
    tree_id: bytes,
    target: str | bytes,
    *,
    include: Iterable[str | bytes] = (),
    exclude: Iterable[str | bytes] = (),
    sparse: bool = True,
    verify: bool = False,
    progress: ProgressCallback | None = None,
    workers: int = 4,
) -> RestoreReport:
    """Restore the tree ``tree_id`` (its entries directly under ``target``).

    Raises RestoreError for a target that cannot be written and UsageError for bad
    patterns; per-file problems (a damaged blob, a write error) end up in the report."""
    started = time.monotonic()
    selector = Selector(include, exclude)
    root = check_target(target)
    plan = build_plan(repo, tree_id, selector)
    table = plan.files
    report = RestoreReport()
    tracker = ProgressTracker(progress, len(table), table.total_bytes)
    tracker.set_phase("content")
    failed: dict[bytes, str] = {}

    dir_failed = _create_dirs(root, plan, failed)
    for rel, node in plan.others:
        if rel in dir_failed or _parent_failed(rel, dir_failed):
            continue
        try:
            warning = make_special(_join(root, rel), node)
        except OSError as e:
            failed[rel] = f"{_shown(root, rel)}: cannot create {node.type}: {e.strerror}"
            continue
        if warning:
            report.warnings.append(warning)
            failed[rel] = ""  # not created; no metadata, but not an error either
        else:
            report.others += 1

    unique = [f for f in range(len(table)) if f not in table.link_to]
    to_write = [f for f in unique if not _parent_failed(table.paths[f], dir_failed)]
    writer = ContentWriter(
        repo, root, table, to_write, tracker, sparse=sparse, workers=workers, metadata=True
    )
    writer.run()
    report.warnings.extend(writer.warnings)
    for f, message in writer.failed.items():
        failed[table.paths[f]] = message
    if dir_failed:
        for f in unique:
            rel = table.paths[f]
            if rel not in failed and _parent_failed(rel, dir_failed):
                failed[rel] = f"{_shown(root, rel)}: its directory could not be created"

    _link_hardlinks(root, table, failed)

    # The writer set each file's metadata as its content completed.
    tracker.set_phase("metadata")
    for rel, node in plan.others:
        if rel not in failed:
            report.warnings.extend(apply_metadata(_join(root, rel), node))
    for rel, node in reversed(plan.dirs):
        if rel not in failed:
            report.warnings.extend(apply_metadata(_join(root, rel), node))

    files_ok = [f for f in range(len(table)) if table.paths[f] not in failed]
    report.files = len(files_ok)
    report.dirs = sum(1 for rel, _ in plan.dirs if rel not in failed)
    report.bytes_written = sum(table.sizes[f] for f in files_ok if f not in table.link_to)

    if verify:
        tracker.set_phase("verify", reset=True)
        check = [f for f in files_ok if f not in table.link_to]
        mismatches = verify_files(repo, root, table, check, tracker, workers)
        report.errors.extend(mismatches)
        report.verified_files = len(check) - len(mismatches)

    for rel, message in failed.items():
        if message:
            report.failed_files.append(rel)
            report.errors.append(message)
    report.duration = time.monotonic() - started
    return report


def _shown(root: bytes, rel: bytes) -> str:
    """A restored path as users see it in messages."""
    return os.fsdecode(_join(root, rel))


def _parent_failed(rel: bytes, dir_failed: set[bytes]) -> bool:
    if not dir_failed:
        return False
    parent = rel.rpartition(b"/")[0]
    while parent:
        if parent in dir_failed:
            return True
        parent = parent.rpartition(b"/")[0]
    return False


def _create_dirs(root: bytes, plan: Plan, failed: dict[bytes, str]) -> set[bytes]:
    """Create the directories parents first; returns those that could not be created."""
    bad: set[bytes] = set()
    for rel, _node in plan.dirs:
        if _parent_failed(rel, bad):
            bad.add(rel)
            failed[rel] = ""
            continue
        try:
            make_dir(_join(root, rel))
        except OSError as e:
            bad.add(rel)
            failed[rel] = f"{_shown(root, rel)}: cannot create directory: {e.strerror}"
    return bad


def _link_hardlinks(root: bytes, table: FileTable, failed: dict[bytes, str]) -> None:
    """Every further name of a hard-linked file becomes a link to the first one restored."""
    for f, first in table.link_to.items():
        rel, first_rel = table.paths[f], table.paths[first]
        if first_rel in failed:
            failed[rel] = f"{_shown(root, rel)}: not linked, {_shown(root, first_rel)} failed"
            continue
        path = _join(root, rel)
        try:
            remove_existing(path)
            os.link(_join(root, first_rel), path)
        except OSError as e:
            failed[rel] = f"{_shown(root, rel)}: cannot create hard link: {e.strerror}"


def verify_tree(
    repo: Repository,
    tree_id: bytes,
    target: str | bytes,
    *,
    include: Iterable[str | bytes] = (),
    exclude: Iterable[str | bytes] = (),
    progress: ProgressCallback | None = None,
    workers: int = 4,
) -> RestoreReport:
    """Compare an earlier restore of ``tree_id`` in ``target`` with the snapshot, content
    only (what ``--verify`` does after writing); mismatches are the report's errors."""
    started = time.monotonic()
    root = os.path.abspath(os.fsencode(target))
    table = build_plan(repo, tree_id, Selector(include, exclude)).files
    files = [f for f in range(len(table)) if f not in table.link_to]
    tracker = ProgressTracker(progress, len(files), table.total_bytes)
    tracker.set_phase("verify")
    report = RestoreReport()
    report.errors = verify_files(repo, root, table, files, tracker, workers)
    report.verified_files = len(files) - len(report.errors)
    report.duration = time.monotonic() - started
    return report
