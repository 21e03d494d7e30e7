"""Restore content in worker processes: one per core, each writing whole packs.

Per file a restore is mostly system calls (create, truncate, write, chown, chmod, utime)
and the Python around them, which holds the GIL: two threads on two cores measured only
a little faster than one, and spent a third of their time handing the GIL back and forth
(100,000 files: 10.4 s with threads, 7.8 s with two processes each restoring half).

The workers are forked once the content is planned, so they inherit the key and the
file table (paths, sizes, metadata in arrays, which a worker reads without copying their
pages) and the work of every pack; each call sends a pack's number and gets back counts,
failures and warnings. A file whose blobs all lie in one pack belongs to the
worker that writes that pack: it creates the file, writes it and sets its metadata. A
file with blobs in several packs is created here before the fork (so no two workers
create it), each worker writes its part, and its metadata is set here once every pack
is written (its mtime must come after the last write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cairn.forking import PipePool, WorkerFailed, as_answered, cores, fork_available

if TYPE_CHECKING:
    from cairn.repo.repository import Repository
    from cairn.restorer.writer import ContentWriter, PackWork

#: fewer packs than this are written by threads: forking costs more than it saves
FORK_MIN_PACKS = 4

#: A worker reads a pack in pieces of at most this (the local backend reads 8 MiB):
#: 100,000 files restored as fast, peak memory of the two workers 144 -> 123 MiB.
_WORKER_READ_SPAN = 2 << 20

#: the writer and the packs' work, for the forked workers (set around the fork)
_FORKED: ContentWriter | None = None
_WORK: list[PackWork] | None = None


def processes_for(repo: Repository, packs: int, workers: int) -> int:
    """How many worker processes to restore ``packs`` packs with; 0 for threads.

    Processes need fork() and a backend a child can use on its own (a local directory,
    also through the cache; a connection would be shared and garbled)."""
    if workers < 2 or packs < FORK_MIN_PACKS:
        return 0
    if not fork_available() or not repo.backend.fork_safe:
        return 0
    return min(cores(), packs)


@dataclass(slots=True)
class _Tally:
    """Stands in for the progress tracker in a worker: counts what one call did."""

    files: int = 0
    nbytes: int = 0

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes


@dataclass(slots=True)
class _PackOutcome:
    """What a worker did with one pack."""

    files: int
    nbytes: int
    failed: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _restore_pack_forked(number: int) -> _PackOutcome:
    """In a worker: write the blobs of pack ``number`` of the work it inherited."""
    assert _FORKED is not None and _WORK is not None, "only in a worker forked by run_forked"
    writer = _FORKED
    work = _WORK[number]
    backend = writer.repo.backend
    backend.read_span = min(backend.read_span, _WORKER_READ_SPAN)  # this worker's copy
    tally = _Tally()
    writer.tracker = tally  # type: ignore[assignment]  # the parent reports progress
    failed_before = len(writer.failed)
    warnings_before = len(writer.warnings)
    writer.restore_work(work)
    # dicts keep insertion order: the failures of this call are the last ones
    failed = list(writer.failed.items())[failed_before:]
    return _PackOutcome(tally.files, tally.nbytes, failed, writer.warnings[warnings_before:])


def run_forked(
    writer: ContentWriter, work: list[PackWork], idle: list[int], processes: int
) -> None:
    """Write every pack of ``work`` in ``processes`` forked workers; meanwhile this
    process creates the ``idle`` files (those with no blob to write)."""
    global _FORKED, _WORK
    for f in writer.spanning_files():
        writer.create_spanning(f)
    _FORKED, _WORK = writer, work
    try:
        pool = PipePool(_restore_pack_forked, processes)
    finally:
        _FORKED = _WORK = None
    try:
        _dispatch(writer, work, idle, pool, window=2 * processes)
    except BaseException:
        pool.shutdown(cancel=True)  # Ctrl-C or an error: stop writing
        raise
    pool.shutdown(cancel=False)
    writer.finish_spanning()


def _dispatch(
    writer: ContentWriter, work: list[PackWork], idle: list[int], pool: PipePool, window: int
) -> None:
    """Keep ``window`` packs sent ahead (a worker that finishes early takes the next
    one) and take each outcome as it comes; the files no pack writes are created while
    the first packs are written. A pack is sent as its number in ``work``, which the
    workers inherited: sent whole, a pack of thousands of small files filled the pipe to
    a worker still busy with its last pack, and the next send waited for it (check's
    readers lost 1 s of 3.7 that way)."""
    answered = as_answered(
        pool, range(len(work)), window, meanwhile=lambda: writer.create_idle(work, idle)
    )
    for number, future in answered:
        try:
            outcome = future.result()
        except WorkerFailed as e:
            writer.fail_pack(work[number], str(e))
        else:
            writer.absorb(outcome.files, outcome.nbytes, outcome.failed, outcome.warnings)
