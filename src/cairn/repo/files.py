"""Unpacked JSON files (snapshots, indexes, locks): framing, sealing, naming (spec §6).

A file's name is the SHA-256 of its stored bytes; a loaded file whose hash differs from
its name is damaged. In a version-2 repository the plaintext is ``0x02 || zstd(JSON)`` when
cairn or restic >= 0.14 wrote it, or bare JSON (first byte ``{``/``[``) when it predates
the upgrade from version 1.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cairn.backend.base import Backend, FileType, Handle
from cairn.errors import FormatError, IntegrityError
from cairn.repo.compression import compress, compress_parts, decompress
from cairn.repo.crypto import Key

_ZSTD_MARKER = 0x02
_JSON_FIRST = (ord("{"), ord("["))


class FileStore:
    """Loads and saves the JSON files of one repository."""

    def __init__(self, backend: Backend, key: Key, version: int, level: int = 3) -> None:
        self.backend = backend
        self.key = key
        self.version = version
        #: zstd level for JSON files (restic compresses them even with compression "off").
        self.level = level

    def frame(self, plaintext: bytes) -> bytes:
        """The bytes to seal for ``plaintext``: compressed with a marker byte in v2."""
        if self.version >= 2:
            return bytes((_ZSTD_MARKER,)) + compress(plaintext, self.level)
        return plaintext

    def unframe(self, data: bytes, what: str) -> bytes:
        """Inverse of :meth:`frame`, deciding by the first byte (only in v2, spec §6)."""
        if self.version < 2 or not data:
            return data
        first = data[0]
        if first == _ZSTD_MARKER:
            return decompress(memoryview(data)[1:])
        if first in _JSON_FIRST:
            return data
        raise FormatError(f"{what}: unsupported encoding (first byte 0x{first:02x})")

    def save(self, t: FileType, plaintext: bytes) -> str:
        """Frame, seal and store; returns the file name (SHA-256 of the stored bytes)."""
        return self._store(t, self.key.seal(self.frame(plaintext)))

    def save_parts(self, t: FileType, parts: Iterable[bytes]) -> str:
        """:meth:`save` of the parts joined, compressed as they come in v2: an index file
        of 50,000 blobs is 10 MB of JSON, which whole (list, joined text, bytes) took
        30 MB of a backup's heap, and the heap kept it."""
        if self.version >= 2:
            framed = compress_parts(parts, self.level, prefix=bytes((_ZSTD_MARKER,)))
            return self._store(t, self.key.seal(framed))
        return self.save(t, b"".join(parts))

    def _store(self, t: FileType, sealed: bytes | bytearray) -> str:
        name = hashlib.sha256(sealed).hexdigest()
        self.backend.save(Handle(t, name), sealed)
        return name

    def load(self, t: FileType, name: str) -> bytes:
        """Load, verify the name, open and unframe: the JSON plaintext."""
        handle = Handle(t, name)
        data = self.backend.load(handle)
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), name):
            raise IntegrityError(f"{handle} is damaged: its content does not match its name")
        try:
            plain = self.key.open(data)
        except IntegrityError as e:
            raise IntegrityError(f"{handle} is damaged: {e}") from e
        return self.unframe(plain, str(handle))
