"""The ``check`` operation: is the repository consistent, and (with ``read_data``) intact?

Structure (restic 0.14 ``check``): every index file loads; the packs the index names exist
with the size the index predicts (blob lengths + header entries of 37/41 bytes + 32 + 4);
packs no index names are reported as orphans (harmless, ``prune`` removes them); every
snapshot loads; every tree reachable from a snapshot loads, and every blob it references
is in the index. With ``read_data`` every selected pack is read whole: its SHA-256 must be
its name, its header must decrypt and agree with the index, and every blob must decrypt,
decompress and hash to its ID.

Every error names the damaged pack/blob and the snapshots that depend on it; finding those
needs a second walk over the trees, done only when something is wrong.

Locking: like restic 0.14, check takes an exclusive lock unless ``lock=False`` (the CLI's
``--no-lock``). Nothing is printed; progress goes through a callback.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import random
import re
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cairn import heap
from cairn.backend.base import FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.errors import BackendError, CairnError, CheckFailedError, IntegrityError, UsageError
from cairn.forking import PipePool, as_answered, cores, fork_available
from cairn.ops.packscan import BlobBuffer, PackFile, PackInMemory, PackScan
from cairn.repo.crypto import OVERHEAD
from cairn.repo.ids import BlobType
from cairn.repo.index import MasterIndex, PackedBlob
from cairn.repo.lock import NoLock
from cairn.repo.node import Node
from cairn.repo.pack import COMPRESSED_ENTRY, PLAIN_ENTRY, BlobVerifier, open_blob, open_header
from cairn.repo.repository import Repository
from cairn.repo.snapshot import Snapshot
from cairn.repo.tree import decode_tree, tree_references


@dataclass
class CheckError:
    """One problem. ``kind`` is one of: index, pack-missing, pack-size, pack-damaged,
    blob-damaged, blob-missing, tree-damaged, tree-invalid, snapshot-damaged."""

    kind: str
    message: str
    pack: str | None = None  # hex ID
    blob: str | None = None  # hex ID
    #: IDs (hex) of the snapshots that reach the damaged pack/blob
    snapshots: list[str] = field(default_factory=list)
    #: blobs whose loss this error means, used to find the affected snapshots
    blobs: list[bytes] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        if not self.snapshots:
            return self.message
        shown = ", ".join(s[:8] for s in self.snapshots)
        return f"{self.message} (used by snapshot{'s' if len(self.snapshots) > 1 else ''} {shown})"


@dataclass(frozen=True)
class CheckProgress:
    """``phase`` is "index", "packs", "snapshots", "trees" or "read-data"."""

    phase: str
    done: int
    total: int


@dataclass
class CheckResult:
    errors: list[CheckError] = field(default_factory=list)
    #: packs in the repository that no index names (restic: "additional files", not errors)
    orphaned_packs: list[str] = field(default_factory=list)
    index_files: int = 0
    packs: int = 0
    snapshots: int = 0
    trees: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def damaged_snapshots(self) -> list[str]:
        return sorted({s for e in self.errors for s in e.snapshots})

    def raise_for_errors(self) -> None:
        """CheckFailedError (exit code 1) when anything was found."""
        if self.errors:
            raise CheckFailedError(
                f"check found {len(self.errors)} errors; first: {self.errors[0]}"
            )


ProgressCallback = Callable[[CheckProgress], None]

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def select_packs(
    packs: dict[bytes, int], subset: str | None, rng: random.Random | None = None
) -> list[bytes]:
    """The packs ``--read-data-subset`` chooses from ``packs`` (ID -> size): ``n/t`` (restic's
    bucket rule: first ID byte % t == n-1), ``x%`` (a random fraction, at least one pack) or
    a size like ``500M`` (random packs up to that many bytes)."""
    ids = sorted(packs)
    if not subset:
        return ids
    rng = rng or random.Random()
    text = subset.strip()
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if m:
        n, t = int(m.group(1)), int(m.group(2))
        if t < 1 or not 1 <= n <= t:
            raise UsageError(f"--read-data-subset {subset!r}: need n/t with 1 <= n <= t")
        return [p for p in ids if p[0] % t == n - 1]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise UsageError(f"--read-data-subset {subset!r}: percentage must be in (0, 100]")
        count = int(len(ids) * pct / 100)
        if ids and count < 1:
            count = 1
        return sorted(rng.sample(ids, count))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text.lower())
    if m:
        limit = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
        chosen, total = [], 0
        for p in rng.sample(ids, len(ids)):
            if total + packs[p] > limit:
                continue
            chosen.append(p)
            total += packs[p]
        return sorted(chosen)
    raise UsageError(f"--read-data-subset {subset!r}: expected n/t, x% or a size like 1G")


#: what reading a pack costs beyond its bytes, per blob, in bytes' worth of time (two
#: cores on /usr/lib+share: 3.5 ns a stored byte, ~14 µs a data blob, ~100 µs a tree,
#: which is also decoded)
_DATA_BLOB_COST = 4_000
_TREE_BLOB_COST = 30_000


def costliest_first(
    packs: list[bytes],
    by_pack: dict[bytes, array[int]],
    sizes: dict[bytes, int],
    index: MasterIndex,
) -> list[bytes]:
    """The packs in the order to read them: the longest reads first, so the last ones are
    short and no reader is left alone with a long pack at the end (a pack of 12,674 trees
    took a reader 1.3 s, a 16 MiB data pack 0.2 s). On /usr/lib+share, where that tree
    pack falls mid-way in ID order, both orders measured the same (4.1-4.4 s warm)."""

    def cost(pack_id: bytes) -> int:
        records = by_pack[pack_id]  # never empty: a pack is there for its blobs
        kind = index.entries_at(records[:1])[0][0]  # a packer keeps trees apart
        per_blob = _TREE_BLOB_COST if kind == BlobType.TREE else _DATA_BLOB_COST
        return sizes[pack_id] + per_blob * len(records)

    return sorted(packs, key=cost, reverse=True)


#: a blob's index entry as compared with its pack's header: type, ID, offset, length,
#: uncompressed length
_BlobKey = tuple[int, bytes, int, int, int]


def _blob_key(b: PackedBlob) -> _BlobKey:
    return (int(b.type), b.id, b.offset, b.length, b.uncompressed_length)


def predicted_pack_size(index: MasterIndex, records: Sequence[int]) -> int:
    """Pack size implied by its index entries (spec §7.2), from their index records (no
    blob objects built): blobs, the sealed header (longer entries for compressed blobs),
    its length."""
    stored, compressed = index.stored_at(records)
    header = compressed * COMPRESSED_ENTRY + (len(records) - compressed) * PLAIN_ENTRY + OVERHEAD
    return stored + header + 4


#: a tree's subtrees and the errors of its own nodes
_TreeFindings = tuple[list[bytes], list[CheckError]]


@dataclass
class _PackOutcome:
    """What reading one pack found, handed back to the main thread (or process)."""

    errors: list[CheckError] = field(default_factory=list)
    read: bool = False
    bytes_read: int = 0
    blobs_ok: int = 0
    trees: dict[bytes, _TreeFindings | CairnError] = field(default_factory=dict)


#: free heap a forked reader keeps between packs (see _read_pack_forked)
_READER_FREE_HEAP = 8 << 20
#: fewer packs than this are read by threads: forking costs more than it saves
_FORK_MIN_PACKS = 4
#: the checker, for the forked readers (set around the fork, which they inherit it from)
_FORKED: _Checker | None = None


def _can_fork(repo: Repository) -> bool:
    """Forked readers need fork() and a backend that holds no connection a child could
    garble: a local directory, which each child opens for itself."""
    return fork_available() and repo.backend.fork_safe


def _read_pack_forked(pack_id: bytes) -> _PackOutcome:
    assert _FORKED is not None, "only called in a reader forked by _forked_readers"
    try:
        return _FORKED._read_pack(pack_id, _FORKED.entries(pack_id))
    finally:
        # Stored and decompressed data blobs reuse the reader's buffers (BlobBuffer,
        # BlobVerifier), so what the heap frees is the garbage of trees and small blobs:
        # given back once past 8 MiB, the readers of /usr/lib+share peak at 114-118 MiB
        # in all instead of 127-133 (restic 126), for ~0.1 s more; 3 GiB of 8 MiB chunks
        # take the same time either way (when each pack had its own 8 MiB buffer, every
        # trim made the next pack fault it in again: 8% slower, hence 32 MiB then).
        heap.trim_above(_READER_FREE_HEAP)


class _Checker:
    def __init__(self, repo: Repository, progress: ProgressCallback | None, workers: int):
        self.repo = repo
        self.progress = progress
        self.workers = max(1, workers)
        self.result = CheckResult()
        self._lock = threading.Lock()
        self.snapshots: list[tuple[str, Snapshot]] = []
        #: trees the pack reads verified and decoded, by ID
        self._trees: dict[bytes, _TreeFindings | CairnError] = {}
        self._local = threading.local()
        #: index records by pack, for the packs being read
        self._by_pack: dict[bytes, array[int]] = {}

    def report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(CheckProgress(phase, done, total))

    def error(self, err: CheckError) -> None:
        with self._lock:
            self.result.errors.append(err)

    # --- structure ------------------------------------------------------------------

    def load_snapshots(self) -> None:
        names = self.repo.list_snapshots()
        self.result.snapshots = len(names)
        for i, name in enumerate(names):
            try:
                self.snapshots.append((name, self.repo.load_snapshot(name)))
            except CairnError as e:
                self.error(CheckError("snapshot-damaged", f"snapshot {name[:8]}: {e}"))
            self.report("snapshots", i + 1, len(names))

    def load_index(self) -> None:
        """Each index file on its own, so one damaged file does not hide the others."""
        files = 0

        def loaded(done: int, total: int) -> None:
            nonlocal files
            files = total
            self.report("index", done, total)

        def damaged(name: str, e: CairnError) -> None:
            self.error(CheckError("index", f"index {name[:8]}: {e}"))

        self.repo.load_index(on_error=damaged, on_loaded=loaded, from_cache=False)
        self.result.index_files = files

    def check_packs(self) -> tuple[dict[bytes, array[int]], dict[bytes, int]]:
        """Index vs. the packs really there; returns (index records by pack, existing pack
        sizes)."""
        index = self.repo.index
        by_pack = index.records_by_pack()
        listed = {bytes.fromhex(fi.name): fi.size for fi in self.repo.backend.list(FileType.PACK)}
        self.result.packs = len(listed)
        for i, (pack_id, records) in enumerate(sorted(by_pack.items())):
            self.report("packs", i + 1, len(by_pack))
            size = listed.get(pack_id)
            name = pack_id.hex()
            if size is None:
                ids = [e[1] for e in index.entries_at(records)]
                self.error(
                    CheckError("pack-missing", f"pack {name[:16]} does not exist", name, blobs=ids)
                )
                continue
            want = predicted_pack_size(index, records)
            if size != want:
                ids = [e[1] for e in index.entries_at(records)]
                self.error(
                    CheckError(
                        "pack-size",
                        f"pack {name[:16]}: unexpected file size: got {size}, expected {want}",
                        name,
                        blobs=ids,
                    )
                )
        self.result.orphaned_packs = sorted(p.hex() for p in listed.keys() - by_pack.keys())
        return by_pack, listed

    def _load_tree(self, tree_id: bytes) -> tuple[bytes, _TreeFindings | CairnError]:
        """A tree's findings: from the pack reads when they decoded it, else loaded now."""
        known = self._trees.get(tree_id)
        if known is not None:
            return tree_id, known
        try:
            return tree_id, self._tree_findings(tree_id, self.repo.load_tree(tree_id))
        except CairnError as e:
            return tree_id, e

    def walk_trees(self) -> None:
        """Breadth first over every reachable tree, loading each level in parallel."""
        index = self.repo.index
        seen: set[bytes] = set()
        frontier: list[bytes] = []
        for _sid, snap in self.snapshots:
            if snap.tree not in seen:
                seen.add(snap.tree)
                frontier.append(snap.tree)
        done = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cairn-check") as pool:
            while frontier:
                nxt: list[bytes] = []
                # Trees the pack reads decoded need no thread: handing each of 20,000 to
                # the pool and back took longer than using its findings (0.25 s).
                known = self._trees
                at_hand = [(tid, known[tid]) for tid in frontier if tid in known]
                to_load = [tid for tid in frontier if tid not in known]
                for tid, loaded in itertools.chain(at_hand, pool.map(self._load_tree, to_load)):
                    done += 1
                    self.report("trees", done, len(seen))
                    if isinstance(loaded, CairnError):
                        kind = (
                            "blob-missing" if not index.has(BlobType.TREE, tid) else "tree-damaged"
                        )
                        t = tid.hex()
                        self.error(
                            CheckError(kind, f"tree {t[:16]}: {loaded}", blob=t, blobs=[tid])
                        )
                        continue
                    subtrees, errors = loaded
                    for err in errors:
                        self.error(err)
                    for sub in subtrees:
                        if sub not in seen:
                            seen.add(sub)
                            nxt.append(sub)
                frontier = nxt
        self.result.trees = len(seen)

    def _tree_findings(self, tid: bytes, nodes: list[Node]) -> _TreeFindings:
        """A tree's subtrees and the errors of its nodes: kept per tree, because the pack
        reads decode trees that no snapshot may reach, and only reachable ones count."""
        subtrees: list[bytes] = []
        errors: list[CheckError] = []
        for node in nodes:
            sub = self._check_node(tid, node, errors)
            if sub is not None:
                subtrees.append(sub)
        return subtrees, errors

    def _check_node(self, tid: bytes, node: Node, errors: list[CheckError]) -> bytes | None:
        """Appends the node's errors; returns the subtree to visit."""

        def where() -> str:  # built only for an error: this runs for every node
            return f"tree {tid.hex()[:16]}, {node.type} {node.name.decode('utf-8', 'replace')!r}"

        if node.type == "file":
            if node.content is None:
                errors.append(
                    CheckError("tree-invalid", f"{where()}: file has no content list", blobs=[tid])
                )
                return None
            has = self.repo.index.has
            for i, bid in enumerate(node.content):
                if not has(BlobType.DATA, bid):
                    errors.append(
                        CheckError(
                            "blob-missing",
                            f"{where()}: data blob #{i} {bid.hex()[:16]} is not in the index",
                            blob=bid.hex(),
                            blobs=[bid],
                        )
                    )
        elif node.type == "dir":
            if node.subtree is None:
                errors.append(
                    CheckError("tree-invalid", f"{where()}: directory has no subtree", blobs=[tid])
                )
                return None
            if not self.repo.index.has(BlobType.TREE, node.subtree):
                errors.append(
                    CheckError(
                        "blob-missing",
                        f"{where()}: tree {node.subtree.hex()[:16]} is not in the index",
                        blob=node.subtree.hex(),
                        blobs=[node.subtree],
                    )
                )
                return None
            return node.subtree
        elif node.type not in ("symlink", "dev", "chardev", "fifo", "socket", "irregular"):
            errors.append(CheckError("tree-invalid", f"{where()}: unknown node type", blobs=[tid]))
        return None

    # --- data -----------------------------------------------------------------------

    def read_packs(self, by_pack: dict[bytes, array[int]], selected: list[bytes]) -> None:
        total = len(selected)
        self._by_pack = by_pack
        entries = self.entries
        with contextlib.ExitStack() as stack:
            outcomes: Iterator[_PackOutcome]
            if _can_fork(self.repo) and total >= _FORK_MIN_PACKS:
                pool = stack.enter_context(self._forked_readers())
                # A pack's ID is all a reader is sent: it finds the pack's index entries
                # in the index it inherited. Sent along, the entries of a pack of 12,000
                # blobs filled the pipe to a reader still busy with its last pack, and
                # held up every other reader's next pack until it was done (1 s idle).
                answered = as_answered(pool, selected, 2 * cores())
                outcomes = (future.result() for _, future in answered)
            else:
                # Each reader holds a whole pack (16 MiB) and its blobs while it works: one
                # per backend connection, like restic, not one per metadata worker (measured
                # on 1 GiB: 4 -> 2 readers, peak RSS 180 -> 130 MB, no slower on two cores).
                readers = max(1, min(self.workers, int(self.repo.backend.connections or 1)))
                threads = stack.enter_context(
                    ThreadPoolExecutor(readers, thread_name_prefix="cairn-check")
                )
                outcomes = threads.map(lambda p: self._read_pack(p, entries(p)), selected)
            for i, outcome in enumerate(outcomes):
                self._take(outcome)
                self.report("read-data", i + 1, total)

    def entries(self, pack_id: bytes) -> list[_BlobKey]:
        """A pack's entries in the index (read_packs sets which packs)."""
        return self.repo.index.entries_at(self._by_pack.get(pack_id, ()))

    @contextlib.contextmanager
    def _forked_readers(self) -> Iterator[PipePool]:
        """Worker processes, one per core, that read packs: per blob the work is native
        (hash, MAC, decrypt, decompress) but the Python around it holds the GIL, and with
        many small blobs two threads measured barely faster than one. The children inherit
        the key and the index from the fork and send back only their findings; reading the
        index's records copies no page of it (they live in a few large buffers)."""
        global _FORKED
        _FORKED = self
        try:
            pool = PipePool(_read_pack_forked, cores())
            try:
                yield pool
            except BaseException:
                # Ctrl-C or an error: stop the readers rather than let them read every pack
                pool.shutdown(cancel=True)
                raise
            else:
                pool.shutdown(cancel=False)
        finally:
            _FORKED = None

    def _take(self, outcome: _PackOutcome) -> None:
        self.result.errors.extend(outcome.errors)
        if outcome.read:
            self.result.packs_read += 1
            self.result.bytes_read += outcome.bytes_read
        self.result.blobs_read += outcome.blobs_ok
        self._trees.update(outcome.trees)

    def _open_pack(self, name: str) -> PackScan:
        backend = self.repo.backend
        if isinstance(backend, LocalBackend):
            return PackFile(
                backend.local_path(Handle(FileType.PACK, name)), self._reader_state()[0]
            )
        return PackInMemory(backend.load(Handle(FileType.PACK, name)), self._reader_state()[0])

    def _read_pack(self, pack_id: bytes, indexed: list[_BlobKey]) -> _PackOutcome:
        """Reads one pack; ``indexed`` holds its entries in the index (as ``_blob_key``)."""
        name = pack_id.hex()
        ids = [k[1] for k in indexed]
        out = _PackOutcome()
        try:
            pack = self._open_pack(name)
        except CairnError as e:
            out.errors.append(CheckError("pack-damaged", f"pack {name[:16]}: {e}", name, blobs=ids))
            return out
        try:
            self._verify_pack(pack_id, indexed, pack, out)
            digest = pack.digest()
        except BackendError as e:  # an I/O error part way through
            out.errors.append(CheckError("pack-damaged", f"pack {name[:16]}: {e}", name, blobs=ids))
            return out
        finally:
            pack.close()
        out.read = True
        out.bytes_read = pack.size
        if not hmac.compare_digest(digest, pack_id):
            out.errors.insert(
                0,
                CheckError(
                    "pack-damaged",
                    f"pack {name[:16]}: content does not match its ID (SHA-256 is "
                    f"{digest.hex()[:16]})",
                    name,
                    blobs=ids,
                ),
            )
        return out

    def _verify_pack(
        self, pack_id: bytes, indexed: list[_BlobKey], pack: PackScan, out: _PackOutcome
    ) -> None:
        """Header against the index, then every blob; findings go to ``out``."""
        name = pack_id.hex()
        try:
            header = self._parse_header(pack_id, pack)
        except IntegrityError as e:
            ids = [k[1] for k in indexed]
            out.errors.append(CheckError("pack-damaged", f"pack {name[:16]}: {e}", name, blobs=ids))
            return
        key = _blob_key
        in_header = {key(b) for b in header}
        for k in indexed:
            if k not in in_header:
                kind, bid, offset = BlobType(k[0]), k[1], k[2]
                out.errors.append(
                    CheckError(
                        "pack-damaged",
                        f"pack {name[:16]}: {kind.label} blob {bid.hex()[:16]} at offset "
                        f"{offset} is in the index but not in the pack header",
                        name,
                        bid.hex(),
                        blobs=[bid],
                    )
                )
        in_index = set(indexed)
        verifier = self._reader_state()[1]
        for b in header:
            if key(b) not in in_index:
                out.errors.append(
                    CheckError(
                        "pack-damaged",
                        f"pack {name[:16]}: {b.type.label} blob {b.id.hex()[:16]} is in the pack "
                        f"header but not in the index",
                        name,
                        b.id.hex(),
                    )
                )
            sealed = pack.blob(b.offset, b.length)
            try:
                if b.type is BlobType.TREE:
                    plain = open_blob(self.repo.key, b, sealed)
                else:
                    verifier.verify(b, sealed)
            except IntegrityError as e:
                out.errors.append(
                    CheckError(
                        "blob-damaged", f"pack {name[:16]}: {e}", name, b.id.hex(), blobs=[b.id]
                    )
                )
                continue
            out.blobs_ok += 1
            if b.type is BlobType.TREE:
                # the structure walk that follows takes the tree from here instead of
                # reading and decrypting it a second time
                out.trees[b.id] = self._decoded_findings(b.id, plain)

    def _reader_state(self) -> tuple[BlobBuffer, BlobVerifier]:
        """This thread's (or forked reader's) buffers, kept from pack to pack: with 8 MiB
        chunks a new one a pack was faulted in again after every heap trim."""
        state: tuple[BlobBuffer, BlobVerifier] | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = (BlobBuffer(), BlobVerifier(self.repo.key))
        return state

    def _decoded_findings(self, tid: bytes, plain: bytes) -> _TreeFindings | CairnError:
        refs = tree_references(plain)
        if refs is not None:
            subtrees, content = refs
            index = self.repo.index
            if index.has_all(BlobType.DATA, content) and index.has_all(BlobType.TREE, subtrees):
                return subtrees, []
        # something to report, or a tree in another form: the nodes say what
        try:
            return self._tree_findings(tid, decode_tree(plain))
        except CairnError as e:
            return CairnError(str(e))  # the base class pickles from a forked reader

    def _parse_header(self, pack_id: bytes, pack: PackScan) -> list[PackedBlob]:
        return open_header(self.repo.key, pack.header_bytes(), pack_id, pack.size)

    # --- who depends on what ----------------------------------------------------------

    def attribute_snapshots(self) -> None:
        """Fill ``snapshots`` of every error: which snapshots reach its blobs."""
        index = self.repo.index
        errors = [e for e in self.result.errors if e.blobs]
        if not errors:
            return
        damaged_packs = {e.pack for e in self.result.errors if e.pack and e.kind != "blob-damaged"}
        bad: set[bytes] = set()
        for e in errors:
            for bid in e.blobs:
                copies = index.lookup_all(BlobType.DATA, bid) + index.lookup_all(BlobType.TREE, bid)
                # a blob with an intact copy elsewhere is not lost
                if e.kind.startswith("pack") and any(
                    c.pack_id.hex() not in damaged_packs for c in copies
                ):
                    continue
                bad.add(bid)
        if not bad:
            return
        reach = _Reach(self.repo, bad)
        users: dict[bytes, set[str]] = {}
        for sid, snap in self.snapshots:
            for bid in reach.of(snap.tree):
                users.setdefault(bid, set()).add(sid)
        for e in errors:
            found: set[str] = set()
            for bid in e.blobs:
                found |= users.get(bid, set())
            e.snapshots = sorted(found)


class _Reach:
    """Which of the ``bad`` blobs each tree reaches (memoised over the tree DAG)."""

    _EMPTY: frozenset[bytes] = frozenset()

    def __init__(self, repo: Repository, bad: set[bytes]):
        self.repo = repo
        self.bad = bad
        self.memo: dict[bytes, frozenset[bytes]] = {}

    def of(self, root: bytes) -> frozenset[bytes]:
        # iterative post-order: trees may nest deeper than the recursion limit
        stack: list[tuple[bytes, list[bytes] | None]] = [(root, None)]
        own: dict[bytes, set[bytes]] = {}
        while stack:
            tid, children = stack.pop()
            if tid in self.memo:
                continue
            if children is None:
                found = {tid} & self.bad
                subs: list[bytes] = []
                try:
                    nodes = self.repo.load_tree(tid)
                except CairnError:
                    nodes = []
                for node in nodes:
                    if node.content:
                        found.update(b for b in node.content if b in self.bad)
                    if node.subtree is not None:
                        if node.subtree in self.bad:
                            found.add(node.subtree)
                        subs.append(node.subtree)
                own[tid] = found
                stack.append((tid, subs))
                stack.extend((s, None) for s in subs if s not in self.memo)
                continue
            acc = own.pop(tid)
            for s in children:
                acc |= self.memo.get(s, self._EMPTY)
            self.memo[tid] = frozenset(acc) if acc else self._EMPTY
        return self.memo.get(root, self._EMPTY)


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    read_data_subset: str | None = None,
    progress: ProgressCallback | None = None,
    lock: bool = True,
    workers: int = 4,
) -> CheckResult:
    """Check the repository; ``read_data_subset`` implies reading data. Returns the result
    (``result.ok``); the caller turns errors into an exit code (``raise_for_errors``)."""
    if read_data_subset is not None:
        select_packs({}, read_data_subset)  # reject a malformed subset before any work
    checker = _Checker(repo, progress, workers)
    with repo.lock(exclusive=True, defer_recheck=True) if lock else NoLock() as held:
        # snapshots before the index (spec §14.1)
        checker.load_snapshots()
        checker.load_index()
        held.confirm()  # both were read while the lock's recheck waited
        by_pack, listed = checker.check_packs()
        if read_data or read_data_subset:
            # data first: the walk then takes every tree the reads decoded
            present = {p: listed[p] for p in by_pack if p in listed}
            chosen = select_packs(present, read_data_subset)
            checker.read_packs(by_pack, costliest_first(chosen, by_pack, present, repo.index))
        checker.walk_trees()
        checker.attribute_snapshots()
    return checker.result
