"""The ``restore`` operation: a snapshot (or ``SNAPSHOT:sub/path``) into a directory.

Like restic 0.14: a shared lock unless ``lock=False``; ``latest`` honours the host, path and
tag filters; the entries of the snapshot's root tree (or of the sub-directory) land directly
under the target; existing files are overwritten. Sparse restore is the default here
(restic needs ``--sparse``): zero chunks become holes, the content is the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cairn.errors import RestoreError, UsageError
from cairn.repo.lock import NoLock
from cairn.repo.repository import Repository
from cairn.repo.treepath import subtree_at
from cairn.restorer.progress import ProgressCallback
from cairn.restorer.restorer import RestoreReport, restore_tree, verify_tree


@dataclass
class RestoreResult(RestoreReport):
    """A :class:`RestoreReport` plus which snapshot (and sub-directory) was restored."""

    snapshot_id: str = ""
    subpath: str = ""
    target: str = ""

    def raise_for_errors(self) -> None:
        """RestoreError (exit code 1) when any file could not be restored or verified."""
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise RestoreError(f"{len(self.errors)} errors during restore: {first}{more}")


def split_ref(snapshot_ref: str) -> tuple[str, str]:
    """``"ID:sub/dir"`` -> (``"ID"``, ``"sub/dir"``); no colon -> (ref, "")."""
    ref, _, sub = snapshot_ref.partition(":")
    if not ref:
        raise UsageError(f"no snapshot ID in {snapshot_ref!r}")
    return ref, sub


def _resolve(
    repo: Repository,
    snapshot_ref: str,
    hosts: Sequence[str],
    paths: Sequence[str],
    tags: Sequence[str],
) -> tuple[str, str, bytes]:
    """(snapshot ID, subpath, tree to restore); loads the index after the snapshot
    (spec §14.1: the other order could miss the index of a snapshot just written)."""
    ref, sub = split_ref(snapshot_ref)
    sid, snap = repo.find_snapshot(ref, hosts=hosts, paths=paths, tags=tags)
    if len(repo.index) == 0:
        repo.load_index()
    tree = subtree_at(repo, snap.tree, sub)
    return sid, sub, tree


def restore(
    repo: Repository,
    snapshot_ref: str,
    target: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    verify: bool = False,
    sparse: bool = True,
    progress: ProgressCallback | None = None,
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
    lock: bool = True,
    workers: int | None = None,
) -> RestoreResult:
    """Restore ``snapshot_ref`` (``latest``, an ID or prefix, optionally ``:subpath``) into
    ``target``. Per-file failures are in ``errors`` (``raise_for_errors`` for the exit
    code); RestoreError for an unwritable target, UsageError for bad patterns."""
    with repo.lock(defer_recheck=True) if lock else NoLock() as held:
        sid, sub, tree = _resolve(repo, snapshot_ref, hosts, paths, tags)
        held.confirm()  # the snapshot and index were read while the lock's recheck waited
        report = restore_tree(
            repo,
            tree,
            target,
            include=include,
            exclude=exclude,
            sparse=sparse,
            verify=verify,
            progress=progress,
            workers=_workers(repo, workers),
        )
    return RestoreResult(**vars(report), snapshot_id=sid, subpath=sub, target=target)


def verify_restored(
    repo: Repository,
    snapshot_ref: str,
    target: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    hosts: Sequence[str] = (),
    paths: Sequence[str] = (),
    tags: Sequence[str] = (),
    lock: bool = True,
    workers: int | None = None,
) -> RestoreResult:
    """Re-check an earlier restore of ``snapshot_ref`` in ``target`` against the snapshot
    (file contents by chunk hash, sizes) without writing anything."""
    with repo.lock(defer_recheck=True) if lock else NoLock() as held:
        sid, sub, tree = _resolve(repo, snapshot_ref, hosts, paths, tags)
        held.confirm()  # the snapshot and index were read while the lock's recheck waited
        report = verify_tree(
            repo,
            tree,
            target,
            include=include,
            exclude=exclude,
            progress=progress,
            workers=_workers(repo, workers),
        )
    return RestoreResult(**vars(report), snapshot_id=sid, subpath=sub, target=target)


def _workers(repo: Repository, workers: int | None) -> int:
    """One pack reader per backend connection (as restic sizes it), at least two so both
    cores decrypt and decompress: more only adds memory on a local disk."""
    if workers is not None:
        return workers
    return max(2, int(getattr(repo.backend, "connections", 2) or 2))
