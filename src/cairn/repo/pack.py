"""Pack files: blobs back to back, then the sealed header and its LE32 length (spec §7).

This module knows the byte layout only: building a header, parsing one, reading a pack's
header without an index (for check and repair), and opening one stored blob.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from cairn.backend.base import Backend, FileType, Handle
from cairn.errors import FormatError, IntegrityError
from cairn.repo.compression import decompress, decompress_into
from cairn.repo.crypto import OVERHEAD, Key
from cairn.repo.ids import BLOB_TYPES, BlobType
from cairn.repo.index import PackedBlob

PLAIN_ENTRY = 37  # type(1) || LE32 length || id(32)
COMPRESSED_ENTRY = 41  # type(1) || LE32 length || LE32 uncompressed_length || id(32)
#: restic rejects headers larger than this.
MAX_HEADER = 16 * 1024 * 1024
#: Smallest valid pack: one plain entry, sealed, plus the length field.
MIN_PACK = PLAIN_ENTRY + OVERHEAD + 4
#: restic reads this much from the end first, so small headers need one request.
_SPECULATIVE_TAIL = 15 * COMPRESSED_ENTRY + OVERHEAD + 4

_PLAIN = struct.Struct("<BI32s")
_COMPRESSED = struct.Struct("<BII32s")
_LE32 = struct.Struct("<I")


def header_entry(t: BlobType, length: int, uncompressed_length: int, blob_id: bytes) -> bytes:
    """One header entry; ``uncompressed_length`` 0 means the blob is stored uncompressed."""
    if uncompressed_length:
        return _COMPRESSED.pack(int(t) | 2, length, uncompressed_length, blob_id)
    return _PLAIN.pack(int(t), length, blob_id)


def seal_header(key: Key, entries: bytes) -> bytes:
    """The pack trailer: sealed header entries followed by LE32 of their sealed length."""
    sealed = key.seal(entries)
    return bytes(sealed) + _LE32.pack(len(sealed))


def parse_header(plain: bytes | memoryview, pack_id: bytes) -> list[PackedBlob]:
    """Decode decrypted header entries into blobs with running offsets."""
    out: list[PackedBlob] = []
    view = memoryview(plain)
    pos = 0
    offset = 0
    end = len(view)
    while pos < end:
        kind = view[pos]
        if kind in (0, 1):
            if pos + PLAIN_ENTRY > end:
                raise FormatError("pack header ends inside an entry")
            _, length, bid = _PLAIN.unpack_from(view, pos)
            ulen = 0
            pos += PLAIN_ENTRY
        elif kind in (2, 3):
            if pos + COMPRESSED_ENTRY > end:
                raise FormatError("pack header ends inside an entry")
            _, length, ulen, bid = _COMPRESSED.unpack_from(view, pos)
            if ulen == 0:
                raise FormatError("pack header has a compressed entry of length 0")
            pos += COMPRESSED_ENTRY
        else:
            raise FormatError(f"pack header has an invalid entry type {kind}")
        if length < OVERHEAD:
            raise FormatError(f"pack header lists a blob of {length} bytes")
        out.append(PackedBlob(BLOB_TYPES[kind & 1], bid, pack_id, offset, length, ulen))
        offset += length
    return out


def read_header(
    backend: Backend, key: Key, pack_id: bytes, size: int | None = None
) -> list[PackedBlob]:
    """Read and parse a pack's header without an index (spec §7.4).

    Raises IntegrityError (or FormatError) when the trailer, MAC or entries are invalid,
    or when the entries do not add up to the file size."""
    handle = Handle(FileType.PACK, pack_id.hex())
    where = f"{handle}: "
    if size is None:
        size = backend.stat(handle)
    if size < MIN_PACK:
        raise FormatError(f"{where}{size} bytes is too small for a pack")
    tail_len = min(size, _SPECULATIVE_TAIL)
    tail = backend.load(handle, size - tail_len, tail_len)
    hlen = header_length(size, memoryview(tail)[tail_len - 4 :], where)
    if hlen + 4 <= tail_len:
        sealed: bytes | memoryview = memoryview(tail)[tail_len - 4 - hlen : tail_len - 4]
    else:
        sealed = backend.load(handle, size - 4 - hlen, hlen)
    return open_header(key, sealed, pack_id, size, where)


def header_length(size: int, last4: bytes | memoryview, where: str = "") -> int:
    """The sealed header's length from a pack's last 4 bytes; FormatError when it cannot
    be right for a file of ``size`` bytes."""
    if size < 4 or len(last4) != 4:
        raise FormatError(f"{where}{size} bytes is too small for a pack")
    (hlen,) = _LE32.unpack_from(last4)
    if hlen < OVERHEAD or hlen > MAX_HEADER or hlen + 4 > size:
        raise FormatError(f"{where}invalid header length {hlen} for a {size}-byte pack")
    return int(hlen)


def open_header(
    key: Key, sealed: bytes | memoryview, pack_id: bytes, size: int, where: str = ""
) -> list[PackedBlob]:
    """Decrypt and parse a sealed header; its entries must add up to the file's ``size``."""
    try:
        plain = key.open(sealed)
    except IntegrityError as e:
        raise IntegrityError(f"{where}header is damaged: {e}") from e
    blobs = parse_header(plain, pack_id)
    data_end = sum(b.length for b in blobs)
    if data_end + len(sealed) + 4 != size:
        raise FormatError(
            f"{where}header describes {data_end + len(sealed) + 4} bytes, the file has {size}"
        )
    return blobs


def open_blob(key: Key, blob: PackedBlob, sealed: bytes | memoryview) -> bytes:
    """Decrypt, decompress and verify one stored blob; IntegrityError on any mismatch."""
    try:
        plain = key.open(sealed)
        if blob.uncompressed_length:
            plain = decompress(plain, blob.uncompressed_length)
    except IntegrityError as e:
        raise _blob_error(blob, f"is damaged: {e}") from e
    if hashlib.sha256(plain).digest() != blob.id:
        raise _blob_error(blob, "does not match its ID")
    return plain


def _blob_error(blob: PackedBlob, what: str) -> IntegrityError:
    return IntegrityError(
        f"{blob.type.label} blob {blob.id.hex()[:16]} in pack {blob.pack_id.hex()[:16]} {what}"
    )


#: data blobs up to this size are decompressed into a new buffer: small ones are quick to
#: allocate, and the heap reuses their space
_SMALL_BLOB = 1 << 20


class BlobVerifier:
    """Verifies stored blobs as :func:`open_blob` does, for a reader that only needs to know
    that each one is sound (check --read-data): the blob is decrypted where it lies and a
    big one decompressed into a buffer kept from blob to blob, so no buffer the size of a
    blob is made per blob. A forked reader of 16 MiB packs of 8 MiB chunks otherwise held
    three such buffers at a time and a heap grown by their free space (65 MB private)."""

    def __init__(self, key: Key):
        self.key = key
        self._out = bytearray()

    def verify(self, blob: PackedBlob, sealed: memoryview) -> None:
        """IntegrityError unless ``sealed`` (writable; overwritten) is ``blob`` intact."""
        try:
            plain = self.key.open_in_place(sealed)
            size = blob.uncompressed_length
            if not size:
                digest = hashlib.sha256(plain).digest()
            elif size <= _SMALL_BLOB:
                digest = hashlib.sha256(decompress(plain, size)).digest()
            else:
                if len(self._out) <= size:
                    self._out = bytearray(size + 1)
                decompress_into(plain, self._out, size)
                with memoryview(self._out) as out:
                    digest = hashlib.sha256(out[:size]).digest()
        except IntegrityError as e:
            raise _blob_error(blob, f"is damaged: {e}") from e
        if digest != blob.id:
            raise _blob_error(blob, "does not match its ID")


def coalesce(blobs: Sequence[PackedBlob], max_gap: int, max_span: int) -> list[list[PackedBlob]]:
    """Group blobs by offset into runs that one ranged read each can cover: a gap of at
    most ``max_gap`` bytes is read and discarded, a run spans at most ``max_span`` bytes."""
    groups: list[list[PackedBlob]] = []
    start = end = 0
    for b in sorted(blobs, key=lambda b: b.offset):
        if groups and b.offset - end <= max_gap and b.offset + b.length - start <= max_span:
            groups[-1].append(b)
            end = max(end, b.offset + b.length)
            continue
        groups.append([b])
        start, end = b.offset, b.offset + b.length
    return groups
