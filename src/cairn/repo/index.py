"""The index: where each blob lives (spec §8), in memory and as index files.

``MasterIndex`` is the union of all index files. It must hold millions of blobs, so it
keeps no Python object per blob: fixed-size records in a bytearray (40 bytes) plus the
first 8 bytes of each ID in an ``array('Q')`` (8 bytes), and an open-addressing table of
``uint32`` record numbers keyed by those 8 bytes (5-11 bytes per blob at a load factor of
0.375-0.75). About 60 bytes per blob in all.

Reads take no lock: writers append the record before they publish its table slot and
swap in a rebuilt table as one attribute store, so a reader sees either the old or the new
state, never a half-written one (the GIL makes each array/bytearray access atomic).
"""

from __future__ import annotations

import binascii
import json
import operator
import re
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cairn.errors import FormatError
from cairn.repo.crypto import OVERHEAD
from cairn.repo.ids import BLOB_TYPES, BlobType

#: restic starts a new index file after this many blobs.
INDEX_FILE_BLOBS = 50_000


@dataclass(frozen=True, slots=True)
class PackedBlob:
    """One stored copy of a blob: pack, offset, stored length (incl. the 32 crypto bytes)
    and the plaintext length if compressed (0 = stored uncompressed)."""

    type: BlobType
    id: bytes
    pack_id: bytes
    offset: int
    length: int
    uncompressed_length: int

    @property
    def plaintext_length(self) -> int:
        return self.uncompressed_length or self.length - OVERHEAD


#: One record: id[8:32], pack number | type << 31, offset, length, uncompressed length.
_REC = struct.Struct("<24sIIII")
_REC_SIZE = _REC.size
#: a record's length and uncompressed length (its last 8 bytes)
_LENGTHS = struct.Struct("<II")
_by_offset = operator.itemgetter(2)
_TYPE_BIT = 1 << 31
#: dump_state's header: the layout (and this machine's byte order, since the arrays are
#: copied as they are in memory), then the number of records, packs and table slots.
_STATE_MAGIC = f"cairn-index-1-{sys.byteorder}".encode().ljust(24, b"\0")
_STATE_HEAD = struct.Struct("<24sQQQ")
_MAX_LOAD = 0.75


def _exact(blob_id: bytes) -> bytes | None:
    """The caller's ID object when a blob may keep it (immutable bytes, not a view)."""
    return blob_id if type(blob_id) is bytes else None


def _key(blob_id: bytes) -> int:
    return int.from_bytes(blob_id[:8], "little")


class MasterIndex:
    """Compact, thread-safe map (type, blob ID) -> stored copies. Duplicates (the same blob
    in several packs) are kept; the exact same copy listed twice is stored once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = array("Q")
        self._rest = bytearray()
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._table = array("I", bytes(4 * 1024))
        self._count = 0

    # --- reading --------------------------------------------------------------

    def _records(self, t: BlobType, blob_id: bytes, first_only: bool = False) -> list[int]:
        """Record numbers of every copy of (t, blob_id); a plain loop, no generator: this
        is the hot path of dedup during backup."""
        key = int.from_bytes(blob_id[:8], "little")
        tail = blob_id[8:]
        table = self._table
        prefix = self._prefix
        rest = self._rest
        mask = len(table) - 1
        i = key & mask
        found: list[int] = []
        while True:
            slot = table[i]
            if not slot:
                return found
            r = slot - 1
            if prefix[r] == key:
                base = r * _REC_SIZE
                if rest[base : base + 24] == tail and (rest[base + 27] >> 7) == t:
                    found.append(r)
                    if first_only:
                        return found
            i = (i + 1) & mask

    def _blob(self, r: int, bid: bytes | None = None) -> PackedBlob:
        """Record ``r`` as a blob; ``bid``, when the caller has the ID at hand, is used
        instead of a new copy (a restore plan keeps one blob per chunk of every file)."""
        tail, packword, offset, length, ulen = _REC.unpack_from(self._rest, r * _REC_SIZE)
        if bid is None:
            bid = self._prefix[r].to_bytes(8, "little") + tail
        return PackedBlob(
            BLOB_TYPES[packword >> 31],
            bid,
            self._packs[packword & ~_TYPE_BIT],
            offset,
            length,
            ulen,
        )

    def lookup(self, t: BlobType, blob_id: bytes) -> PackedBlob | None:
        """One stored copy of the blob, or None."""
        found = self._records(t, blob_id, True)
        return self._blob(found[0], _exact(blob_id)) if found else None

    def lookup_all(self, t: BlobType, blob_id: bytes) -> list[PackedBlob]:
        """Every stored copy of the blob (several after interrupted or concurrent writes)."""
        bid = _exact(blob_id)
        return [self._blob(r, bid) for r in self._records(t, blob_id)]

    def has(self, t: BlobType, blob_id: bytes) -> bool:
        return bool(self._records(t, blob_id, True))

    def has_all(self, t: BlobType, blob_ids: Iterable[bytes]) -> bool:
        """Whether every one of ``blob_ids`` is stored (check asks it of every blob every
        tree names)."""
        records = self._records
        return all(records(t, blob_id, True) for blob_id in blob_ids)

    def __len__(self) -> int:
        """Number of stored copies (a blob in two packs counts twice)."""
        return self._count

    def __iter__(self) -> Iterator[PackedBlob]:
        for r in range(self._count):
            yield self._blob(r)

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (for diagnostics and the size test)."""
        return (
            sys.getsizeof(self._rest)
            + sys.getsizeof(self._prefix)
            + sys.getsizeof(self._table)
            + sys.getsizeof(self._packs)
            + sys.getsizeof(self._pack_no)
            + sum(sys.getsizeof(p) for p in self._packs)
        )

    def pack_ids(self) -> set[bytes]:
        """Every pack some index file lists."""
        return set(self._packs)

    def by_pack(self) -> dict[bytes, list[PackedBlob]]:
        """Blobs grouped by pack, each list sorted by offset (for check and prune)."""
        out: dict[bytes, list[PackedBlob]] = {}
        for b in self:
            out.setdefault(b.pack_id, []).append(b)
        for blobs in out.values():
            blobs.sort(key=lambda b: b.offset)
        return out

    def records_by_pack(self) -> dict[bytes, array[int]]:
        """Record numbers grouped by pack: 4 bytes a blob where :meth:`by_pack` builds an
        object of ~150 (15 MB for 100,000 blobs); :meth:`entries_at` turns one pack's into
        entries when it is its turn."""
        packs = self._packs
        rest = self._rest
        out: dict[bytes, array[int]] = {}
        for r in range(self._count):
            packword = int.from_bytes(rest[r * _REC_SIZE + 24 : r * _REC_SIZE + 28], "little")
            pack_id = packs[packword & ~_TYPE_BIT]
            records = out.get(pack_id)
            if records is None:
                records = out[pack_id] = array("I")
            records.append(r)
        return out

    def entries_at(self, records: Iterable[int]) -> list[tuple[int, bytes, int, int, int]]:
        """The entries of these record numbers sorted by offset, as plain tuples (type,
        ID, offset, length, uncompressed length): ``check --read-data`` sends them to its
        readers, and a tuple costs a third of a PackedBlob to build."""
        rest = self._rest
        prefix = self._prefix
        unpack = _REC.unpack_from
        out = []
        for r in records:
            tail, packword, offset, length, ulen = unpack(rest, r * _REC_SIZE)
            bid = prefix[r].to_bytes(8, "little") + tail
            out.append((packword >> 31, bid, offset, length, ulen))
        out.sort(key=_by_offset)
        return out

    def stored_at(self, records: Iterable[int]) -> tuple[int, int]:
        """(stored bytes, how many are compressed) of these records: a pack's expected
        size without building its blobs."""
        rest = self._rest
        unpack = _LENGTHS.unpack_from
        total = compressed = 0
        for r in records:
            length, ulen = unpack(rest, r * _REC_SIZE + 32)
            total += length
            compressed += ulen != 0
        return total, compressed

    # --- as one block of bytes (the local cache keeps it, sealed) ----------------

    def dump_state(self) -> bytes:
        """Every structure as it is in memory: :meth:`load_state` takes it back in a few
        milliseconds, where decoding the index files takes ~3 us a blob."""
        with self._lock:
            count = self._count
            table = self._table
            return b"".join(
                (
                    _STATE_HEAD.pack(_STATE_MAGIC, count, len(self._packs), len(table)),
                    b"".join(self._packs),
                    self._prefix[:count].tobytes(),
                    bytes(self._rest[: count * _REC_SIZE]),
                    table.tobytes(),
                )
            )

    def load_state(self, state: bytes | bytearray | memoryview) -> None:
        """Become the index :meth:`dump_state` described (this one must be empty).
        FormatError when ``state`` is not such a block."""
        view = memoryview(state)
        if len(view) < _STATE_HEAD.size:
            raise FormatError("index state: too short")
        magic, count, npacks, nslots = _STATE_HEAD.unpack_from(view)
        sizes = (32 * npacks, 8 * count, _REC_SIZE * count, 4 * nslots)
        if magic != _STATE_MAGIC or _STATE_HEAD.size + sum(sizes) != len(view):
            raise FormatError("index state: not this version's layout")
        if not nslots or nslots & (nslots - 1) or count > nslots * _MAX_LOAD:
            raise FormatError("index state: inconsistent table")
        pos = _STATE_HEAD.size
        parts = []
        for size in sizes:
            parts.append(view[pos : pos + size])
            pos += size
        packs = [bytes(parts[0][i : i + 32]) for i in range(0, len(parts[0]), 32)]
        prefix = array("Q")
        prefix.frombytes(parts[1])
        table = array("I")
        table.frombytes(parts[3])
        with self._lock:
            if self._count:
                raise ValueError("load_state needs an empty index")
            self._packs = packs
            self._pack_no = {p: i for i, p in enumerate(packs)}
            self._prefix = prefix
            self._rest = bytearray(parts[2])
            self._count = count
            self._table = table  # last: lock-free readers find records for every slot

    # --- writing --------------------------------------------------------------

    def add(self, blobs: Iterable[PackedBlob]) -> None:
        """Add stored copies (e.g. of a pack that was just uploaded)."""
        by_pack: dict[bytes, list[tuple[int, bytes, int, int, int]]] = {}
        for b in blobs:
            by_pack.setdefault(b.pack_id, []).append(
                (int(b.type), b.id, b.offset, b.length, b.uncompressed_length)
            )
        for pack_id, entries in by_pack.items():
            self.add_pack(pack_id, entries)

    def add_pack(self, pack_id: bytes, entries: Sequence[tuple[int, bytes, int, int, int]]) -> None:
        """Add the blobs of one pack: (type, id, offset, length, uncompressed_length)."""
        with self._lock:
            pack_no = self._pack_no.get(pack_id)
            if pack_no is None:
                pack_no = len(self._packs)
                if pack_no >= _TYPE_BIT:
                    raise OverflowError("too many packs for the in-memory index")
                self._packs.append(pack_id)
                self._pack_no[pack_id] = pack_no
            self._reserve(self._count + len(entries))
            table = self._table
            mask = len(table) - 1
            prefix = self._prefix
            rest = self._rest
            pack_rec = _REC.pack
            for t, bid, offset, length, ulen in entries:
                if len(bid) != 32:
                    raise FormatError(f"invalid blob ID of {len(bid)} bytes")
                key = _key(bid)
                tail = bid[8:]
                packword = pack_no | (int(t) << 31)
                i = key & mask
                duplicate = False
                while True:
                    slot = table[i]
                    if not slot:
                        break
                    r = slot - 1
                    if prefix[r] == key:
                        base = r * _REC_SIZE
                        if rest[base : base + 28] == tail + packword.to_bytes(4, "little"):
                            duplicate = True  # the same copy listed by two index files
                            break
                    i = (i + 1) & mask
                if duplicate:
                    continue
                r = self._count
                # Record first, table slot last: lock-free readers never see a slot
                # that points past the records.
                prefix.append(key)
                rest += pack_rec(tail, packword, offset, length, ulen)
                table[i] = r + 1
                self._count = r + 1

    def _reserve(self, n: int) -> None:
        """Grow the table (rebuilt off to the side, then swapped in) for ``n`` records."""
        size = len(self._table)
        if n <= size * _MAX_LOAD:
            return
        while n > size * _MAX_LOAD:
            size *= 2
        table = array("I", bytes(4 * size))
        mask = size - 1
        prefix = self._prefix
        for r in range(self._count):
            i = prefix[r] & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = r + 1
        self._table = table


# --- index files ------------------------------------------------------------------

#: (type, blob ID, offset, length, uncompressed_length)
BlobEntry = tuple[int, bytes, int, int, int]
#: (pack ID, [blob entries])
PackEntries = tuple[bytes, list[BlobEntry]]


def encode_index(
    packs: Iterable[tuple[bytes, Sequence[PackedBlob]]], supersedes: Sequence[str] = ()
) -> bytes:
    """restic's index JSON: compact, fields in restic's order, ``uncompressed_length`` only
    for compressed blobs, and Go's json.Encoder newline at the end."""
    return b"".join(encode_index_parts(packs, supersedes))


def encode_index_parts(
    packs: Iterable[tuple[bytes, Sequence[PackedBlob]]], supersedes: Sequence[str] = ()
) -> Iterator[bytes]:
    """:func:`encode_index` a pack at a time, for a writer that compresses the parts as
    they come (FileStore.save_parts): ``packs`` may build each pack's blobs when taken."""
    head = "{"
    if supersedes:
        head += '"supersedes":[' + ",".join(f'"{s}"' for s in supersedes) + "],"
    head += '"packs":['
    first_pack = True
    for pack_id, blobs in packs:
        body = ",".join(
            f'{{"id":"{b.id.hex()}","type":"{b.type.label}","offset":{b.offset},'
            f'"length":{b.length}'
            + (
                f',"uncompressed_length":{b.uncompressed_length}}}'
                if b.uncompressed_length
                else "}"
            )
            for b in blobs
        )
        sep = head if first_pack else ","
        first_pack = False
        yield f'{sep}{{"id":"{pack_id.hex()}","blobs":[{body}]}}'.encode("ascii")
    yield (head if first_pack else "").encode("ascii") + b"]}\n"


_TYPES = {"data": 0, "tree": 1}


def decode_index(data: bytes) -> tuple[list[PackEntries], list[str]]:
    """Parse an index file: (packs, supersedes). Accepts the legacy bare-array form."""
    packs, supersedes = iter_index(data)
    return list(packs), supersedes


def iter_index(data: bytes) -> tuple[Iterator[PackEntries], list[str]]:
    """Like :func:`decode_index`, but the packs come one at a time, each built when it is
    taken: the caller adds a pack's entries to its index before the next pack's exist.
    The whole file is checked before this returns (a damaged file raises here, before
    any of its packs is handed out); taking the packs cannot fail. Built all at once, the
    entries of a 50,000-blob file (~14 MiB of tuples) were the peak of ``check``."""
    spans = _compact_spans(data)
    if spans is None:
        packs, supersedes = _decode_json(data)
        return iter(packs), supersedes
    listed, supersedes = spans
    return (
        (pack_id, _compact_entries(data, start, end)) for pack_id, start, end in listed
    ), supersedes


def _decode_json(data: bytes) -> tuple[list[PackEntries], list[str]]:
    """Any JSON layout of an index file (spaces, field order, the legacy array)."""
    try:
        doc = json.loads(data)
        if isinstance(doc, list):
            packs_doc, supersedes = doc, []
        elif isinstance(doc, dict):
            packs_doc = doc.get("packs") or []
            supersedes = [str(s) for s in doc.get("supersedes") or []]
        else:
            raise ValueError("not a JSON object")
        out: list[PackEntries] = []
        fromhex = bytes.fromhex
        for p in packs_doc:
            entries = []
            for b in p.get("blobs") or []:
                t = _TYPES.get(b["type"])
                if t is None:
                    raise ValueError(f"invalid blob type {b['type']!r}")
                bid = fromhex(b["id"])
                if len(bid) != 32:
                    raise ValueError("blob ID is not 32 bytes")
                entries.append(
                    (
                        t,
                        bid,
                        int(b["offset"]),
                        int(b["length"]),
                        int(b.get("uncompressed_length") or 0),
                    )
                )
            pid = fromhex(p["id"])
            if len(pid) != 32:
                raise ValueError("pack ID is not 32 bytes")
            out.append((pid, entries))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"invalid index file: {e}") from e
    return out, supersedes


# restic's own layout, as Go's encoder writes it (and encode_index above): no spaces,
# fields in this order, lowercase hex, no leading zeros.
_HEAD = re.compile(rb'\{(?:"supersedes":\[((?:"[0-9a-f]{64}",)*"[0-9a-f]{64}")?\],)?"packs":\[')
_PACK = re.compile(rb'\{"id":"([0-9a-f]{64})","blobs":\[')


#: One blob entry; ``%(g)s`` opens each field's group: "(" to capture, "(?:" not to.
_BLOB_FORMAT = (
    rb'\{"id":"%(g)s[0-9a-f]{64})","type":"%(g)sdata|tree)",'
    rb'"offset":%(g)s0|[1-9][0-9]{0,18}),"length":%(g)s0|[1-9][0-9]{0,18})'
    rb'(?:,"uncompressed_length":%(g)s[1-9][0-9]{0,18}))?\}'
)


def _blob_pattern(group: bytes) -> bytes:
    return _BLOB_FORMAT % {b"g": group}


_BLOB = re.compile(_blob_pattern(b"("))
#: A pack's whole blob list, checked in one pass (no groups: twice as fast) before its
#: entries are taken out.
_BLOB_LIST = re.compile(b"(?:%s,)*%s" % (_blob_pattern(b"(?:"), _blob_pattern(b"(?:")))
_TYPE_BYTES = {b"data": 0, b"tree": 1}


#: a pack in an index file in restic's layout: its ID and where its blob list lies
_PackSpan = tuple[bytes, int, int]


def _compact_spans(data: bytes) -> tuple[list[_PackSpan], list[str]] | None:
    """Checks the whole file against restic's layout (None if it is not in it) and
    returns each pack's ID with the span of its blob list, and the superseded files: the
    entries are then read without a JSON object per blob (a 50,000-blob file held ~6x
    its text in dicts and strings while json decoded it). None only sends the file to
    the json decoder, so this decides how fast, never what."""
    head = _HEAD.match(data)
    if head is None:
        return None
    listed = head.group(1)
    supersedes = [s.strip(b'"').decode() for s in listed.split(b",")] if listed else []
    pos = head.end()
    spans: list[_PackSpan] = []
    unhex = binascii.unhexlify
    if data[pos : pos + 1] == b"]":
        pos += 1
    else:
        while True:
            pack = _PACK.match(data, pos)
            if pack is None:
                return None
            pos = pack.end()
            end = data.find(b"]}", pos)  # no "]" inside a blob entry
            if end < 0 or (end > pos and _BLOB_LIST.fullmatch(data, pos, end) is None):
                return None
            spans.append((unhex(pack.group(1)), pos, end))
            pos = end + 2
            sep = data[pos : pos + 1]
            pos += 1
            if sep == b"]":
                break
            if sep != b",":
                return None
    if data[pos:] not in (b"}", b"}\n"):
        return None
    return spans, supersedes


def _compact_entries(data: bytes, start: int, end: int) -> list[BlobEntry]:
    """The entries of one blob list that :func:`_compact_spans` checked."""
    types = _TYPE_BYTES
    unhex = binascii.unhexlify
    return [
        (types[t], unhex(bid), int(offset), int(length), int(ulen or 0))
        for bid, t, offset, length, ulen in _BLOB.findall(data, start, end)
    ]
