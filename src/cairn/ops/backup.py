"""``backup``: one complete snapshot of the targets, incremental against a parent."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cairn import __version__
from cairn.archiver.archiver import Archiver, BackupStats, Progress
from cairn.archiver.dirsig import DirRecords, options_key
from cairn.archiver.fsmeta import go_time
from cairn.archiver.prefetch import MetadataPrefetch
from cairn.archiver.scanner import Scanner
from cairn.archiver.select import ExcludeOptions, Selector
from cairn.archiver.targets import build_layout, snapshot_paths
from cairn.chunker import Chunker
from cairn.errors import CairnError, Interrupted, SnapshotNotFoundError, UsageError
from cairn.repo.gojson import format_time
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.lock import Lock, NoLock
from cairn.repo.node import GoTime, Node
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot


@dataclass
class BackupOptions:
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    parent: str | None = None
    force: bool = False
    dry_run: bool = False
    time: GoTime | None = None
    #: Reader threads for big files; None = the archiver's default (one per two cores).
    read_concurrency: int | None = None
    #: Processes that read and seal small files (archiver/encoders.py): None = one per
    #: core once enough files need reading, 0 = none (threads only).
    encoder_processes: int | None = None
    excludes: ExcludeOptions = field(default_factory=ExcludeOptions)


@dataclass
class BackupResult:
    snapshot_id: str | None  # None for --dry-run
    parent_id: str | None
    #: True when every file was read (no parent, or --force): a "full" backup.
    full: bool
    paths: list[str]
    stats: BackupStats
    duration: float
    dry_run: bool = False

    @property
    def incomplete(self) -> bool:
        """Some files could not be read (the CLI exits 3, like restic)."""
        return bool(self.stats.errors)

    def summary(self) -> dict[str, object]:
        """restic's ``--json`` summary message."""
        s = self.stats
        out: dict[str, object] = {
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new,
            "dirs_changed": s.dirs_changed,
            "dirs_unmodified": s.dirs_unmodified,
            "data_blobs": s.data_blobs,
            "tree_blobs": s.tree_blobs,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "total_files_processed": s.total_files_processed,
            "total_bytes_processed": s.total_bytes_processed,
            "total_duration": round(self.duration, 6),
            "bytes_read": s.bytes_read,
            "backup_type": "full" if self.full else "incremental",
            "errors": len(s.errors),
        }
        if self.snapshot_id:
            out["snapshot_id"] = self.snapshot_id
        if self.parent_id:
            out["parent"] = self.parent_id
        if self.dry_run:
            out["dry_run"] = True
        return out


def now_gotime() -> GoTime:
    return go_time(time.time_ns())


def find_parent(
    repo: Repository, host: str, paths: list[str], explicit: str | None, before: GoTime
) -> tuple[str, Snapshot] | None:
    """restic's parent rule: ``--parent`` if given, else the newest snapshot of the same
    host with the same set of paths, not newer than this backup."""
    if explicit:
        return repo.find_snapshot(explicit)
    want = sorted(paths)
    best: tuple[str, Snapshot] | None = None
    for sid in repo.list_snapshots():
        try:
            snap = repo.load_snapshot(sid)
        except SnapshotNotFoundError:
            continue
        if snap.hostname != host or sorted(snap.paths) != want:
            continue
        if snap.time.to_ns() > before.to_ns():
            continue
        if best is None or snap.time.to_ns() > best[1].time.to_ns():
            best = (sid, snap)
    return best


def _new_snapshot(
    tree: bytes, paths: list[str], opts: BackupOptions, host: str, t: GoTime
) -> Snapshot:
    return Snapshot(
        time=t,
        tree=tree,
        paths=paths,
        hostname=host,
        username=_username(),
        uid=os.getuid(),
        gid=os.getgid(),
        excludes=opts.excludes.patterns(),
        tags=list(opts.tags),
        program_version=f"cairn {__version__}",
    )


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _attach_summary(snap: Snapshot, stats: BackupStats, start: GoTime, end: GoTime) -> None:
    """The statistics object newer restic versions store (restic 0.14 ignores it)."""
    snap.summary = {
        "backup_start": format_time(start),
        "backup_end": format_time(end),
        "files_new": stats.files_new,
        "files_changed": stats.files_changed,
        "files_unmodified": stats.files_unmodified,
        "dirs_new": stats.dirs_new,
        "dirs_changed": stats.dirs_changed,
        "dirs_unmodified": stats.dirs_unmodified,
        "data_blobs": stats.data_blobs,
        "tree_blobs": stats.tree_blobs,
        "data_added": stats.data_added,
        "data_added_packed": stats.data_added_packed,
        "total_files_processed": stats.total_files_processed,
        "total_bytes_processed": stats.total_bytes_processed,
    }


def start_prefetch(targets: list[str], opts: BackupOptions) -> MetadataPrefetch | None:
    """Start reading the targets' directory metadata into the kernel's caches (see
    archiver/prefetch); None when the targets cannot be laid out: the backup itself then
    reports why."""
    if not targets:
        return None
    try:
        return MetadataPrefetch(build_layout(targets), Selector(opts.excludes)).start()
    except (CairnError, OSError, ValueError):
        return None


def backup(
    repo: Repository,
    targets: list[str],
    opts: BackupOptions,
    *,
    warn: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    lock: bool = True,
    scan: bool = False,
    on_file: Callable[[str, bytes], None] | None = None,
    report_unchanged: bool = True,
    prefetch: MetadataPrefetch | None = None,
) -> BackupResult:
    """Back up ``targets`` into ``repo``; the caller opened the repository. With ``scan``,
    a Scanner counts the targets beside the backup so ``progress`` gets totals.
    ``on_file`` hears of every file, unchanged ones only with ``report_unchanged``.
    ``prefetch`` (from :func:`start_prefetch`) lends its directory signatures to the walk
    when the parent has directory records, and is stopped when it has none."""
    if not targets:
        raise UsageError("nothing to back up: give at least one path (or --stdin)")
    started = time.monotonic()
    start_time = opts.time or now_gotime()
    host = opts.host or socket.gethostname()
    paths = snapshot_paths(targets)
    layout = build_layout(targets)
    selector = Selector(opts.excludes)
    if scan and progress is not None:
        progress.scanner = Scanner(layout, selector).start()
    try:
        with repo.lock(defer_recheck=True) if lock else NoLock() as held, _gated(repo, held):
            repo.load_index()
            # Packs a killed backup uploaded without an index: index them, do not upload again.
            repo.index_orphan_packs(write=not opts.dry_run)
            parent = None if opts.force else find_parent(repo, host, paths, opts.parent, start_time)
            options = options_key(opts.excludes)
            records = DirRecords.load(repo, parent[0], options) if parent else None
            signatures = None
            if prefetch is not None:
                if records is None:
                    prefetch.stop()  # nothing to compare its signatures with
                else:
                    prefetch.join()
                    signatures = prefetch.signatures
            archiver = Archiver(
                repo,
                selector,
                parent_tree=parent[1].tree if parent else None,
                dry_run=opts.dry_run,
                read_concurrency=opts.read_concurrency,
                warn=warn,
                progress=progress,
                on_file=on_file,
                records=records,
                report_unchanged=report_unchanged,
                signatures=signatures,
                encoder_processes=opts.encoder_processes,
            )
            try:
                tree = archiver.run(layout)
            except (KeyboardInterrupt, Interrupted):
                archiver.interrupted.set()
                if not opts.dry_run:
                    # Index what already landed, so the next backup does not upload it again.
                    repo.flush()
                raise Interrupted("backup interrupted; no snapshot was written") from None
            except BaseException:
                if not opts.dry_run:
                    # Index what landed; if that fails too, the first error is the one to report.
                    with contextlib.suppress(Exception):
                        repo.flush()
                raise
            snap_id = None
            if not opts.dry_run:
                repo.flush()
                snap = _new_snapshot(tree, paths, opts, host, start_time)
                if parent:
                    snap.parent = parent[0]
                _attach_summary(snap, archiver.stats, start_time, now_gotime())
                snap_id = repo.save_snapshot(snap)
                # Only a speed-up for the next backup: the snapshot is saved, so nothing
                # that goes wrong in keeping the records may fail this one.
                with contextlib.suppress(Exception):
                    archiver.records.save(repo, snap_id, options)
                with contextlib.suppress(Exception):
                    repo.cache_index()  # the next command then decodes no index file
    finally:
        if progress is not None and progress.scanner is not None:
            progress.scanner.stop()
    return BackupResult(
        snapshot_id=snap_id,
        parent_id=parent[0] if parent else None,
        full=parent is None,
        paths=paths,
        stats=archiver.stats,
        duration=time.monotonic() - started,
        dry_run=opts.dry_run,
    )


def backup_stdin(
    repo: Repository,
    stream: BinaryIO,
    filename: str,
    opts: BackupOptions,
    *,
    lock: bool = True,
) -> BackupResult:
    """Store ``stream`` as a single file ``/filename`` (restic's ``--stdin``)."""
    if not filename or "/" in filename.strip("/"):
        raise UsageError(f"invalid --stdin-filename {filename!r}: a plain file name is required")
    filename = filename.strip("/")
    started = time.monotonic()
    t = opts.time or now_gotime()
    host = opts.host or socket.gethostname()
    stats = BackupStats()
    with repo.lock(defer_recheck=True) if lock else NoLock() as held, _gated(repo, held):
        repo.load_index()
        # Packs a killed backup uploaded without an index: index them, do not upload again.
        repo.index_orphan_packs(write=not opts.dry_run)
        chunker = Chunker(repo.config.chunker_polynomial)
        content: list[bytes] = []
        size = 0
        for chunk in chunker.chunks(stream):
            data = bytes(chunk)
            size += len(data)
            if opts.dry_run:
                bid = blob_id(data)
            else:
                bid, added, stored = repo.save_blob(BlobType.DATA, data)
                if added:
                    stats.data_blobs += 1
                    stats.data_added += len(data)
                    stats.data_added_packed += stored
            content.append(bid)
        node = Node(
            name=os.fsencode(filename),
            type="file",
            mode=0o644,
            mtime=t,
            atime=t,
            ctime=t,
            uid=os.getuid(),
            gid=os.getgid(),
            size=size,
            content=content,
        )
        stats.files_new = 1
        stats.total_files_processed = 1
        stats.total_bytes_processed = size
        stats.bytes_read = size
        snap_id = None
        if not opts.dry_run:
            tree = repo.save_tree([node])
            repo.flush()
            snap = _new_snapshot(tree, [f"/{filename}"], opts, host, t)
            _attach_summary(snap, stats, t, now_gotime())
            snap_id = repo.save_snapshot(snap)
            with contextlib.suppress(Exception):
                repo.cache_index()
    return BackupResult(
        snapshot_id=snap_id,
        parent_id=None,
        full=True,
        paths=[f"/{filename}"],
        stats=stats,
        duration=time.monotonic() - started,
        dry_run=opts.dry_run,
    )


@contextlib.contextmanager
def _gated(repo: Repository, held: Lock | NoLock) -> Iterator[None]:
    """The lock's recheck (restic's 0.2 s wait for a lock taken at the same moment) runs
    while the backup loads the index and walks: the first write waits for it instead
    (measured: no-change of 100k files 1.73 -> 1.63 s cold; a walk shorter than the
    delay, as for a few big files, gains nothing: the snapshot waits)."""
    repo.write_gate = held.confirm
    try:
        yield
    finally:
        repo.write_gate = None
