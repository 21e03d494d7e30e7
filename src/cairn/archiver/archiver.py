"""The backup pipeline: walk, detect changes against the parent, chunk, store, build trees.

Threads and why:
- the calling thread walks directories (metadata work, cheap per entry);
- ``read_concurrency`` reader threads open changed files and cut them into chunks (the C
  chunker releases the GIL);
- ``blob_workers`` threads hash, compress and encrypt each chunk and add it to a pack
  (SHA-256, zstd and AES all release the GIL), so even one large file keeps both cores busy.
A byte budget bounds the chunks in flight, so memory does not grow with file size.

A directory's tree is written by whichever thread finishes its last child, so the walk never
waits at directory boundaries.
"""

from __future__ import annotations

import copy
import functools
import mmap
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn import heap
from cairn.archiver.chunkring import ChunkRing
from cairn.archiver.dirsig import DirRecord, DirRecords, directory_signature, entry_signature
from cairn.archiver.encoders import BATCH_BYTES, BATCH_FILES, MAX_FILE, EncodedFile, Encoders
from cairn.archiver.fileio import open_regular, read_small
from cairn.archiver.fsmeta import (
    XATTRS_UNREAD,
    go_time,
    group_name,
    node_from_stat,
    read_xattrs,
    user_name,
)
from cairn.archiver.scanner import Scanner
from cairn.archiver.select import Selector
from cairn.archiver.targets import Target, VirtualDir
from cairn.chunker import DEFAULT_BUFFER_SIZE, Chunker
from cairn.errors import CairnError, Interrupted
from cairn.forking import cores, fork_available
from cairn.repo.ids import BlobType, blob_id
from cairn.repo.node import Node, go_mode
from cairn.repo.repository import Repository


def default_read_concurrency() -> int:
    """Reader threads for big files: one per two cores. A reader only reads and chunks
    (3 GB/s a core); the blob threads behind it do the rest, so on 2 cores one reader
    keeps both busy, and each reader costs its 10 MiB chunk buffer. Warm initial backups,
    alternating, one reader against two: 3 GB of big files 6.86-7.32 s against 6.61-7.50
    s, peak 80-81 MiB against 89-91; /usr 9.9-10.8 s against 9.9-10.4 s, peak 153-158
    MiB against 162-168; cold, /usr 11.65-11.79 s against 11.27-12.07 s."""
    return max(1, cores() // 2)


@dataclass
class BackupStats:
    """Counters in restic's summary vocabulary."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    data_added_packed: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    #: Bytes actually read from changed/new files (unmodified files are not read).
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """What a progress display needs; updated by the pipeline, read by a ticker."""

    files_done: int = 0
    bytes_done: int = 0
    current: str = ""
    #: Counts the targets beside the backup, for totals and an ETA (only when shown).
    scanner: Scanner | None = None

    def totals(self) -> tuple[int, int] | None:
        """(files, bytes) to process, once the scanner has finished counting."""
        s = self.scanner
        if s is None or not s.done.is_set() or s.cancelled.is_set():
            return None
        return s.files, s.bytes


class _DirJob:
    """A directory being built: its nodes, and how many children are still outstanding."""

    __slots__ = (
        "nodes",
        "pending",
        "parent",
        "node",
        "name",
        "old_subtree",
        "old_nodes",
        "lock",
        "path",
        "signature",
        "reused",
        "subtrees",
    )

    def __init__(
        self,
        parent: _DirJob | None,
        node: Node | None,
        old_subtree: bytes | None,
        name: bytes = b"",
    ):
        self.nodes: list[Node] = []
        self.pending = 1  # the walker's own reference until the listing is complete
        self.parent = parent
        self.node = node  # this directory's node in its parent (None for the root)
        self.name = node.name if node is not None else name
        self.old_subtree = old_subtree
        #: The parent snapshot's nodes of this directory, kept until its tree is written.
        self.old_nodes: dict[bytes, Node] | None = None
        self.lock = threading.Lock()
        #: A real directory's path and listing signature; None when its record must not be
        #: kept (not listed, or an entry could not be read).
        self.path: bytes | None = None
        self.signature: bytes | None = None
        #: The parent's record when the directory is unchanged: no nodes are built, and
        #: ``subtrees`` collects the new tree IDs of its subdirectories.
        self.reused: DirRecord | None = None
        self.subtrees: dict[bytes, bytes] = {}


WarnFn = Callable[[str], None]
#: A file for a reader: its directory's job, its node, its path, whether the parent had it.
_FileJob = tuple[_DirJob, Node, bytes, bool]
#: At most this many small files go to a reader thread at once.
_BATCH_FILES = 16
#: A batch of small files is sent once it holds files of this many directories: each
#: directory waits for its files before its tree is saved, with its parent tree's nodes
#: (after a day's changes, one changed file in each of many directories).
_BATCH_DIRS = 16
#: Unless asked for, encoder processes are forked once this many files could use them: a
#: backup that reads a few files is done before forking would pay off.
_FORK_AFTER_FILES = 256


class Archiver:
    """Builds one snapshot tree from the targets; returns the root tree ID."""

    def __init__(
        self,
        repo: Repository,
        selector: Selector,
        *,
        parent_tree: bytes | None = None,
        dry_run: bool = False,
        read_concurrency: int | None = None,
        blob_workers: int | None = None,
        warn: WarnFn | None = None,
        on_file: Callable[[str, bytes], None] | None = None,
        progress: Progress | None = None,
        records: DirRecords | None = None,
        report_unchanged: bool = True,
        signatures: dict[bytes, bytes] | None = None,
        encoder_processes: int | None = None,
    ) -> None:
        self.repo = repo
        self.selector = selector
        self.parent_tree = parent_tree
        self.dry_run = dry_run
        self.warn_fn = warn
        #: Called with ("new" | "modified" | "unchanged", path) per file, for -v output.
        self.on_file = on_file
        self.stats = BackupStats()
        self.progress = progress or Progress()
        self.chunker = Chunker(repo.config.chunker_polynomial)
        self._stats_lock = threading.Lock()
        if read_concurrency is None:
            read_concurrency = default_read_concurrency()
        self._readers = ThreadPoolExecutor(max(1, read_concurrency), "cairn-read")
        self._blobs = ThreadPoolExecutor(blob_workers or (os.cpu_count() or 2), "cairn-blob")
        # Enough queued chunk data to keep every blob worker busy, but bounded: readers
        # chunk far faster than zstd compresses, so the ring stays full and its size is
        # resident memory. 10 MiB holds a maximum (8 MiB) chunk plus two average ones:
        # against 12, a backup of /usr peaked 3% lower (all processes' PSS, with the
        # encoders' window below) and one of 3 GB of big files took 3-6% longer.
        self._ring = ChunkRing(self.chunker.max_size + (2 << 20))
        #: Per reader thread: its chunker buffer (see _chunk_buffer).
        self._thread_state = threading.local()
        self._files_in_flight = threading.BoundedSemaphore(4 * max(1, read_concurrency) + 16)
        self._fatal: BaseException | None = None
        self._done = threading.Event()
        self._root_tree: bytes | None = None
        self._dry_run_ids: set[bytes] = set()
        self._hardlinks: dict[tuple[int, int], tuple[list[bytes], int]] = {}
        self.interrupted = threading.Event()
        #: The parent snapshot's directory records (see dirsig), used unless each
        #: unchanged file must be reported by name.
        self._old_records = records if (on_file is None or not report_unchanged) else None
        #: This snapshot's records, for the next backup.
        self.records = DirRecords()
        if self._old_records is not None:
            # Reused directories keep the owner names their nodes were given.
            self.records.users.update(self._old_records.users)
            self.records.groups.update(self._old_records.groups)
        self._records_lock = threading.Lock()
        #: Listing signatures computed ahead of the walk (archiver/prefetch.py), by path.
        self._signatures = signatures
        self._encoders = self._make_encoders(encoder_processes)
        #: Files an encoder may take, counted until the pool is worth forking.
        self._encodable = 0
        self._encode_after = _FORK_AFTER_FILES if encoder_processes is None else 0
        #: Small files the walk has collected for one reader or encoder, across
        #: directories (see _collect), their size by lstat and how many directories
        #: they come from; only the walking thread touches them.
        self._batch: list[_FileJob] = []
        self._batch_bytes = 0
        self._batch_dirs = 0
        self._batch_files = _BATCH_FILES if self._encoders is None else BATCH_FILES

    def _make_encoders(self, processes: int | None) -> Encoders | None:
        """Forked encoders (archiver/encoders.py), one per core by default; none for a dry
        run (nothing is sealed) or where fork() is missing or one core is all there is."""
        if self.dry_run or processes == 0 or (processes is None and not fork_available()):
            return None
        return Encoders(
            self.repo.blob_sealer(), self.repo.index, self.chunker, processes or cores()
        )

    # -- public -------------------------------------------------------------

    def run(self, layout: VirtualDir) -> bytes:
        """Back up ``layout``; returns the root tree ID (everything is queued for upload;
        the caller flushes the repository before writing the snapshot)."""
        # Its big buffers are kept (chunk ring, chunker and sealing buffers); what else is
        # big is mapped and given back when freed, not left as holes in the heap.
        heap.set_mmap_threshold(heap.MMAP_THRESHOLD_KEPT)
        try:
            root = _DirJob(None, None, self.parent_tree)
            stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]] = []
            if layout.target is not None:
                self._list_dir(root, layout.target.path, self.parent_tree, stack)
            else:
                self._add_virtual(root, layout, self.parent_tree, stack)
            self._release(root)
            self._drain(stack)
            while not self._done.wait(0.2):
                self._check()
            self._check()
        finally:
            if self._encoders is not None:
                self._encoders.shutdown(cancel=True)
            self._readers.shutdown(wait=True, cancel_futures=True)
            self._blobs.shutdown(wait=True, cancel_futures=True)
            heap.set_mmap_threshold(heap.MMAP_THRESHOLD_REUSED)
        assert self._root_tree is not None
        return self._root_tree

    # -- walking -------------------------------------------------------------

    def _check(self) -> None:
        if self.interrupted.is_set():
            raise Interrupted("interrupted")
        if self._fatal is not None:
            raise self._fatal

    def _warn(self, msg: str) -> None:
        with self._stats_lock:
            self.stats.errors.append(msg)
        if self.warn_fn:
            self.warn_fn(msg)

    def _parent_nodes(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(tree_id)}
        except CairnError as e:
            self._warn(f"parent tree {tree_id.hex()[:10]} unreadable, files re-read: {e}")
            return {}

    def _add_virtual(
        self,
        job: _DirJob,
        vdir: VirtualDir,
        parent_tree: bytes | None,
        stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]],
    ) -> None:
        """Intermediate directories: nodes from the real directories' metadata, children
        limited to the components leading to targets."""
        old = job.old_nodes = self._parent_nodes(parent_tree)
        for name, child in vdir.children.items():
            path = child.path if isinstance(child, Target) else child.real_path
            try:
                st = os.lstat(path)
            except OSError as e:
                self._warn(f"{os.fsdecode(path)}: {e.strerror}")
                continue
            node, warning = node_from_stat(name, path, st)
            if warning:
                self._warn(f"{os.fsdecode(path)}: {warning}")
            old_node = old.get(name)
            if isinstance(child, VirtualDir):
                if node.type != "dir":
                    self._warn(f"{os.fsdecode(path)}: not a directory")
                    continue
                sub = self._open_dir(job, node, old_node)
                stack.append((sub, child, _subtree(old_node)))
            else:
                self._add_entry(job, node, path, st, old_node, st.st_dev, stack)

    def _open_dir(self, parent: _DirJob, node: Node, old_node: Node | None) -> _DirJob:
        with parent.lock:
            parent.nodes.append(node)
            parent.pending += 1
        return _DirJob(parent, node, _subtree(old_node))

    def _drain(self, stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]]) -> None:
        while stack:
            self._check()
            job, what, parent_tree = stack.pop()
            if isinstance(what, VirtualDir):
                self._add_virtual(job, what, parent_tree, stack)
            else:
                self._list_dir(job, what.path, parent_tree, stack)
            self._release(job)
        self._flush_batch()

    def _list_dir(
        self,
        job: _DirJob,
        path: bytes,
        parent_tree: bytes | None,
        stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]],
    ) -> None:
        """Add every entry of a real directory to ``job``; subdirectories go on the stack."""
        self.progress.current = os.fsdecode(path)
        signature = self._signatures.get(path) if self._signatures else None
        if signature is not None:
            # Listed moments ago by the prefetch: an unchanged directory needs no listing.
            job.path, job.signature = path, signature
            if self._reuse_dir(job, path, parent_tree, stack):
                return
            job.signature = None
        try:
            target_dev = os.lstat(path).st_dev
            with os.scandir(path) as it:
                names = sorted([(e.name, e.path) for e in it])
        except OSError as e:
            self._warn(f"{os.fsdecode(path)}: {e.strerror}")
            return
        listing: list[tuple[bytes, bytes, os.stat_result]] = []
        complete = True
        for name, epath in names:
            try:
                listing.append((name, epath, os.lstat(epath)))
            except OSError as e:
                self._warn(f"{os.fsdecode(epath)}: {e.strerror}")
                complete = False
        job.path = path
        if complete:
            job.signature = directory_signature(
                target_dev, [entry_signature(name, st) for name, _, st in listing]
            )
            if self._reuse_dir(job, path, parent_tree, stack):
                return
        old = job.old_nodes = self._parent_nodes(parent_tree)
        for name, epath, st in listing:
            if self.selector.excluded(epath, st, target_dev):
                continue
            old_node = old.get(name)
            if old_node is not None and self._reusable(old_node, st):
                self._keep_unchanged(job, old_node, epath)
                continue
            # A regular file's extended attributes are read where it is opened (or, if it
            # is unchanged, in _add_entry): listxattr by path from this thread cost a GIL
            # hand-off per file, a fifth of the walk's time with encoders busy.
            regular = stat.S_ISREG(st.st_mode)
            node, warning = node_from_stat(name, epath, st, xattrs=not regular)
            if regular:
                node.extended_attributes = XATTRS_UNREAD
            if warning:
                self._warn(f"{os.fsdecode(epath)}: {warning}")
            self._add_entry(job, node, epath, st, old_node, target_dev, stack, batch=True)

    def _reuse_dir(
        self,
        job: _DirJob,
        path: bytes,
        parent_tree: bytes | None,
        stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]],
    ) -> bool:
        """Take the parent's tree for an unchanged directory (see dirsig): count its files
        as unmodified and visit only its subdirectories. False when it cannot be taken."""
        if self._old_records is None or parent_tree is None:
            return False
        rec = self._old_records.dirs.get(path)
        if rec is None or rec[0] != parent_tree or rec[1] != job.signature:
            return False
        tree, _, blobs, files, size, subdirs = rec
        index = self.repo.index
        # restic's rule for an unchanged file: its content must still be in the index.
        if not index.has(BlobType.TREE, tree) or not all(
            index.has(BlobType.DATA, blobs[i : i + 32]) for i in range(0, len(blobs), 32)
        ):
            return False
        if self.selector.if_present and any(
            self.selector.has_marker(os.path.join(path, name)) for name in subdirs
        ):
            # A marker's content can change without the listing changing (a CACHEDIR.TAG
            # rewritten in place): look again, as the general path would.
            return False
        job.reused = rec
        with self._stats_lock:
            self.stats.total_files_processed += files
            self.stats.total_bytes_processed += size
            self.stats.files_unmodified += files
        self.progress.files_done += files
        self.progress.bytes_done += size
        with job.lock:
            job.pending += len(subdirs)
        for name, subtree in subdirs.items():
            sub = _DirJob(job, None, subtree, name)
            stack.append((sub, Target(os.path.join(path, name), name), subtree))
        return True

    def _add_entry(
        self,
        job: _DirJob,
        node: Node,
        path: bytes,
        st: os.stat_result,
        old_node: Node | None,
        target_dev: int,
        stack: list[tuple[_DirJob, VirtualDir | Target, bytes | None]],
        batch: bool = False,
    ) -> None:
        """Add one entry to ``job``; a file that must be read goes to a reader thread or
        an encoder, small ones (with ``batch``) collected to go there together."""
        if node.type == "dir":
            sub = self._open_dir(job, node, old_node)
            stack.append((sub, Target(path, node.name), _subtree(old_node)))
            return
        if node.type != "file":
            with job.lock:
                job.nodes.append(node)
            return
        if old_node is not None and self._unchanged(node, old_node):
            node.content = list(old_node.content or [])
            if node.extended_attributes is XATTRS_UNREAD:
                self._read_xattrs(node, path, path)
            self._keep_unchanged(job, node, path)
            return
        with self._stats_lock:
            self.stats.total_files_processed += 1
            self.stats.total_bytes_processed += st.st_size
        with job.lock:
            job.nodes.append(node)
            job.pending += 1
        item = (job, node, path, old_node is not None)
        if batch and st.st_size < self.chunker.min_size:
            self._collect(item, st.st_size)
        else:
            self._submit([item])

    def _collect(self, item: _FileJob, size: int) -> None:
        """Add a small file to the walk's batch, sent when full. A batch spans
        directories: cut at each directory's end, the batches of ``real`` (/usr) held
        8 files on average, 12,000 of them, and the encoders waited 30-40% of the time
        for the walk to send the next."""
        if self._encoders is not None and item[1].links > 1:
            # For a reader thread (which keeps hard links together): alone, so that the
            # files collected so far still go to an encoder.
            self._submit([item])
            return
        if not self._batch or self._batch[-1][0] is not item[0]:
            self._batch_dirs += 1
        self._batch.append(item)
        self._batch_bytes += size
        if (
            len(self._batch) >= self._batch_files
            or self._batch_bytes >= BATCH_BYTES
            or self._batch_dirs >= _BATCH_DIRS
        ):
            self._flush_batch()

    def _flush_batch(self) -> None:
        """Send the walk's batch of small files, if it holds any."""
        if self._batch:
            batch, self._batch, self._batch_bytes, self._batch_dirs = self._batch, [], 0, 0
            self._submit(batch)

    def _submit(self, batch: list[_FileJob]) -> None:
        """Hand files to the readers: small files go in batches, since waking a reader
        thread for each cost more than reading a small file. Files an encoder process may
        take go there instead (once enough were seen to be worth it)."""
        if self._encoders is not None and all(
            node.links <= 1 and node.size < MAX_FILE for _, node, _, _ in batch
        ):
            self._encodable += len(batch)
            if self._encodable > self._encode_after:
                self._submit_encoded(batch)
                return
        if not self._files_in_flight.acquire(blocking=False):
            # The readers are full: the small files collected so far must not wait with
            # the walk (their directories' trees would wait, and the encoders idle).
            self._flush_batch()
            self._files_in_flight.acquire()
        self._readers.submit(self._read_batch, batch)

    def _submit_encoded(self, batch: list[_FileJob]) -> None:
        assert self._encoders is not None
        files = [
            (path, node.size, node.extended_attributes is XATTRS_UNREAD)
            for _, node, path, _ in batch
        ]
        future, slot = self._encoders.submit(files)
        future.add_done_callback(lambda f: self._take_encoded(batch, f, slot))

    def _take_encoded(
        self, batch: list[_FileJob], future: Future[list[EncodedFile]], slot: int
    ) -> None:
        """An encoder's results, taken in the pool's result thread (or in the walk's, if
        already done): store the sealed blobs, finish each file as a reader would."""
        assert self._encoders is not None
        try:
            if future.cancelled():  # the backup is failing or interrupted
                return
            error = future.exception()
            if error is not None:
                raise CairnError(f"a backup worker process failed: {error}") from error
            for (job, node, path, existed), encoded in zip(batch, future.result(), strict=True):
                take = functools.partial(self._take_file, job, node, path, encoded, slot)
                self._finish_file(job, node, path, existed, take)
        except BaseException as e:  # noqa: BLE001 - handed to the walking thread
            self._fail(e)
        finally:
            self._encoders.release(slot)

    def _take_file(
        self, job: _DirJob, node: Node, path: bytes, encoded: EncodedFile, slot: int
    ) -> bool:
        """Store one encoded file's new blobs; False (with its warning) if it was skipped."""
        assert self._encoders is not None
        warning, size, changed, blobs, xattrs = encoded
        if warning is not None:
            self._warn(warning)
            return False
        if xattrs is not None:
            node.extended_attributes, xwarn = xattrs
            if xwarn:
                self._warn(f"{os.fsdecode(path)}: {xwarn}")
        content: list[bytes] = []
        for bid, where, ulen, length in blobs:
            if where is not None:
                sealed = self._encoders.sealed(slot, where)
                if self.repo.save_sealed_blob(BlobType.DATA, bid, sealed, ulen):
                    self._count_added(BlobType.DATA, length, len(sealed))
            content.append(bid)
        node.content = content
        self.progress.bytes_done += size
        return self._stored(job, node, os.fsdecode(path), size, changed)

    def _read_batch(self, batch: list[_FileJob]) -> None:
        try:
            for job, node, path, existed in batch:
                self._read_file(job, node, path, existed)
        finally:
            self._files_in_flight.release()

    def _keep_unchanged(self, job: _DirJob, node: Node, path: bytes) -> None:
        """An unchanged file: ``node`` goes into the tree with the parent's content."""
        with self._stats_lock:
            self.stats.total_files_processed += 1
            self.stats.total_bytes_processed += node.size
            self.stats.files_unmodified += 1
        if self.on_file:
            self.on_file("unchanged", path)
        self.progress.files_done += 1
        self.progress.bytes_done += node.size
        with job.lock:
            job.nodes.append(node)

    def _reusable(self, old: Node, st: os.stat_result) -> bool:
        """Whether the parent snapshot's node of a regular file is exactly the node this
        ``lstat`` would give, so it can be kept as it is: no new Node, no xattr listing.
        Every field a node takes from lstat must match; the extended attributes cannot
        have changed without changing ctime. Anything else takes the general path."""
        if (
            old.type != "file"
            or old.size != st.st_size
            or old.inode != st.st_ino
            or old.device_id != st.st_dev
            or old.links != st.st_nlink
            or old.uid != st.st_uid
            or old.gid != st.st_gid
            or old.content is None
            or old.generic_attributes is not None
            or old.error
            or old.linktarget
            or old.device
            or old.subtree is not None
            or not stat.S_ISREG(st.st_mode)
            or old.mode != go_mode(st.st_mode)
            or old.mtime != go_time(st.st_mtime_ns)
            or old.ctime != go_time(st.st_ctime_ns)
            or old.atime != old.mtime
            or old.user != user_name(st.st_uid)
            or old.group != group_name(st.st_gid)
        ):
            return False
        index = self.repo.index
        return all(index.has(BlobType.DATA, b) for b in old.content)

    def _unchanged(self, node: Node, old: Node) -> bool:
        """restic 0.14's rule: same type, size, mtime, ctime and inode, and every content
        blob still known to the index."""
        if (
            old.type != "file"
            or old.size != node.size
            or old.inode != node.inode
            or not old.mtime.same_instant(node.mtime)
            or not old.ctime.same_instant(node.ctime)
            or old.content is None
        ):
            return False
        index = self.repo.index
        return all(index.has(BlobType.DATA, b) for b in old.content)

    # -- file contents -------------------------------------------------------

    def _read_file(self, job: _DirJob, node: Node, path: bytes, existed: bool) -> None:
        self._finish_file(job, node, path, existed, lambda: self._store_content(job, node, path))

    def _finish_file(
        self, job: _DirJob, node: Node, path: bytes, existed: bool, store: Callable[[], bool]
    ) -> None:
        """Store a file's content with ``store`` (False: skipped, warned), then count it,
        report it, and release its directory."""
        ok = False
        try:
            if self._fatal is None and not self.interrupted.is_set():
                ok = store()
                with self._stats_lock:
                    if ok:
                        if existed:
                            self.stats.files_changed += 1
                        else:
                            self.stats.files_new += 1
                if ok and self.on_file:
                    self.on_file("modified" if existed else "new", path)
        except BaseException as e:  # noqa: BLE001 - handed to the walking thread
            self._fail(e)
        finally:
            if not ok:
                with job.lock:
                    job.nodes = [n for n in job.nodes if n is not node]
                    job.signature = None  # its tree lacks a file: no record
            self.progress.files_done += 1
            self._release(job)

    def _store_content(self, job: _DirJob, node: Node, path: bytes) -> bool:
        """Chunk and store one file; False (with a warning) when it cannot be read."""
        key = (node.device_id, node.inode)
        if node.links > 1:
            with self._stats_lock:
                known = self._hardlinks.get(key)
            if known is not None and known[1] == node.size:
                node.content = list(known[0])
                if node.extended_attributes is XATTRS_UNREAD:
                    self._read_xattrs(node, path, path)
                return True
        spath = os.fsdecode(path)
        try:
            fd = open_regular(path)
        except OSError as e:
            self._warn(f"{spath}: {e.strerror or e}")
            return False
        futures: list[Future[bytes]] = []
        size = 0
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self._warn(f"{spath}: changed type during backup, skipped")
                return False
            if node.extended_attributes is XATTRS_UNREAD:
                self._read_xattrs(node, fd, path)
            if before.st_size < self.chunker.min_size:
                whole = read_small(fd, before.st_size, self.chunker.min_size)
                if whole is not None:
                    # Shorter than the minimum chunk: the file is one chunk. Hash, compress
                    # and encrypt it in this thread: for a small file, handing the chunk to
                    # a blob worker and waiting for it cost more than the work itself.
                    size = len(whole)
                    self.progress.bytes_done += size
                    node.content = [self._store_blob(whole)] if size else []
                    return self._stored(job, node, spath, size, _changed(before, os.fstat(fd)))
                os.lseek(fd, 0, os.SEEK_SET)  # it grew past one chunk: the general path
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                for chunk in self.chunker.chunks(f, buffer=self._chunk_buffer()):
                    if self._fatal is not None or self.interrupted.is_set():
                        return False
                    size += len(chunk)
                    self.progress.bytes_done += len(chunk)
                    data, region = self._ring.copy(chunk)
                    try:
                        futures.append(self._blobs.submit(self._save_chunk, data, region))
                    except BaseException:
                        self._ring.give_back(region)
                        raise
            after = os.fstat(fd)
        except OSError as e:
            self._warn(f"{spath}: read error: {e.strerror or e}")
            for fut in futures:
                fut.cancel()
            return False
        finally:
            os.close(fd)
        node.content = [fut.result() for fut in futures]
        return self._stored(job, node, spath, size, _changed(before, after))

    def _read_xattrs(self, node: Node, where: bytes | int, path: bytes) -> None:
        node.extended_attributes, warning = read_xattrs(where)
        if warning:
            self._warn(f"{os.fsdecode(path)}: {warning}")

    def _stored(
        self,
        job: _DirJob,
        node: Node,
        spath: str,
        size: int,
        changed: bool,
    ) -> bool:
        """Bookkeeping once a file's content is stored; warns if it changed meanwhile
        (``changed``: its mtime moved while it was read)."""
        if size != node.size or changed:
            self._warn(f"{spath}: file changed during backup")
            job.signature = None  # the node may not match the listing: no record
        node.size = size  # the content is what was read; keep size consistent with it
        with self._stats_lock:
            self.stats.bytes_read += size
            if node.links > 1:
                self._hardlinks[(node.device_id, node.inode)] = (node.content or [], size)
        return True

    def _save_chunk(self, data: memoryview, region: list[int]) -> bytes:
        """A blob worker's job: store one chunk, then give its place in the ring back."""
        try:
            return self._store_blob(data)
        finally:
            self._ring.give_back(region)

    def _chunk_buffer(self) -> mmap.mmap:
        """This reader thread's chunker buffer, kept from file to file (a new one per file
        was ~10 MiB from the heap each time). Anonymous memory, outside the heap."""
        buffer: mmap.mmap | None = getattr(self._thread_state, "chunk_buffer", None)
        if buffer is None:
            buffer = self._thread_state.chunk_buffer = heap.private_buffer(DEFAULT_BUFFER_SIZE)
        return buffer

    def _store_blob(self, data: bytes | memoryview, t: BlobType = BlobType.DATA) -> bytes:
        """Hash, and store unless known (a dry run only counts): the blob's ID."""
        bid = blob_id(data)
        if self.dry_run:
            with self._stats_lock:
                if bid in self._dry_run_ids or self.repo.index.has(t, bid):
                    return bid
                self._dry_run_ids.add(bid)
            added, stored = True, 0
        else:
            _, added, stored = self.repo.save_blob(t, data, bid)
        if added:
            self._count_added(t, len(data), stored)
        return bid

    def _count_added(self, t: BlobType, length: int, stored: int) -> None:
        with self._stats_lock:
            if t is BlobType.DATA:
                self.stats.data_blobs += 1
            else:
                self.stats.tree_blobs += 1
            self.stats.data_added += length
            self.stats.data_added_packed += stored

    # -- trees ----------------------------------------------------------------

    def _release(self, job: _DirJob) -> None:
        """Drop one outstanding reference; the last one writes the directory's tree."""
        while job is not None:
            with job.lock:
                job.pending -= 1
                if job.pending:
                    return
            try:
                tree_id = self._save_tree(job)
            except BaseException as e:  # noqa: BLE001
                self._fail(e)
                return
            parent = job.parent
            if parent is None:
                self._root_tree = tree_id
                self._done.set()
                return
            if job.node is not None:
                job.node.subtree = tree_id
            else:  # a subdirectory of a reused directory
                with parent.lock:
                    parent.subtrees[job.name] = tree_id
            with self._stats_lock:
                if job.old_subtree is None:
                    self.stats.dirs_new += 1
                elif job.old_subtree == tree_id:
                    self.stats.dirs_unmodified += 1
                else:
                    self.stats.dirs_changed += 1
            job = parent

    def _save_tree(self, job: _DirJob) -> bytes:
        from cairn.repo.tree import encode_tree

        if job.reused is not None:
            return self._save_reused_tree(job, job.reused)
        old_nodes, job.old_nodes = job.old_nodes, None
        if _same_nodes(job.nodes, old_nodes) and job.old_subtree is not None:
            # Nothing in this directory changed: its tree is the parent's. Skips encoding,
            # hashing and the index lookup, per directory of a no-change backup.
            tree = job.old_subtree
        else:
            tree = self._store_blob(encode_tree(job.nodes), BlobType.TREE)
        if job.signature is not None and job.path is not None:
            self._record(job.path, job.signature, tree, job.nodes)
        return tree

    def _save_reused_tree(self, job: _DirJob, rec: DirRecord) -> bytes:
        """The tree of a directory whose own entries are unchanged: the parent's, unless a
        subdirectory's tree changed; then the parent's nodes with those subtree IDs."""
        from cairn.repo.tree import decode_tree, encode_tree, replace_subtrees

        tree, signature, blobs, files, size, subdirs = rec
        if job.subtrees != subdirs:
            # A load error fails the backup: no node is lost.
            data = self.repo.load_blob(BlobType.TREE, tree)
            spliced = None
            if job.subtrees.keys() == subdirs.keys():
                # Only subtree IDs change: swapped in the text, no node decoded or encoded
                # (big directories above every change, on each backup after a change).
                changes = [(subdirs[k], v) for k, v in job.subtrees.items() if subdirs[k] != v]
                spliced = replace_subtrees(data, changes)
            if spliced is None:
                nodes = []
                for n in decode_tree(data):
                    new = job.subtrees.get(n.name) if n.type == "dir" else None
                    if new is not None and new != n.subtree:
                        n = copy.copy(n)
                        n.subtree = new
                    nodes.append(n)
                spliced = encode_tree(nodes)
            tree = self._store_blob(spliced, BlobType.TREE)
        if job.path is not None:
            with self._records_lock:
                self.records.dirs[job.path] = (tree, signature, blobs, files, size, job.subtrees)
        return tree

    def _record(self, path: bytes, signature: bytes, tree: bytes, nodes: list[Node]) -> None:
        """Keep what the next backup needs to reuse this directory (see dirsig)."""
        blobs: list[bytes] = []
        files = size = 0
        subdirs: dict[bytes, bytes] = {}
        users: dict[int, str] = {}
        groups: dict[int, str] = {}
        for n in nodes:
            users[n.uid] = n.user
            groups[n.gid] = n.group
            if n.type == "file":
                files += 1
                size += n.size
                blobs.extend(n.content or ())
            elif n.type == "dir" and n.subtree is not None:
                subdirs[n.name] = n.subtree
        with self._records_lock:
            self.records.dirs[path] = (tree, signature, b"".join(blobs), files, size, subdirs)
            self.records.users.update(users)
            self.records.groups.update(groups)

    def _fail(self, e: BaseException) -> None:
        if self._fatal is None:
            self._fatal = e
        self._done.set()


def _same_nodes(nodes: list[Node], old: dict[bytes, Node] | None) -> bool:
    """Whether ``nodes`` equal, field by field, the parent tree's ``old`` nodes, so that
    they encode to that tree's bytes. Node equality covers every encoded field; a lossy
    symlink target (a bytes subclass that encodes differently) never counts as equal."""
    if not old or len(old) != len(nodes):
        return False
    for n in nodes:
        o = old.get(n.name)
        if o is n:  # a file kept as the parent had it
            continue
        if o is None or o != n or type(o.linktarget) is not bytes:
            return False
    return True


def _subtree(node: Node | None) -> bytes | None:
    if node is None or node.type != "dir":
        return None
    return node.subtree


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file's mtime moved between the fstat before reading it and the one after."""
    return after.st_mtime_ns != before.st_mtime_ns
