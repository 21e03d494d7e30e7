"""Blob types and ID helpers shared by the repository layer and its users."""

from __future__ import annotations

import enum
import hashlib


class BlobType(enum.IntEnum):
    """The two kinds of blob; the value is the pack header's type bit (spec §7.3)."""

    DATA = 0
    TREE = 1

    @property
    def label(self) -> str:
        """The name used in index files: "data" or "tree"."""
        return "data" if self is BlobType.DATA else "tree"


def blob_id(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of the uncompressed plaintext: the ID of a blob."""
    return hashlib.sha256(data).digest()


def to_hex(raw: bytes) -> str:
    return raw.hex()


def from_hex(text: str) -> bytes:
    """Parse a full 64-digit lowercase ID."""
    if len(text) != 64:
        raise ValueError(f"invalid ID {text!r}: expected 64 hex digits")
    return bytes.fromhex(text)


#: The tree of an empty directory, the same in every repository.
EMPTY_TREE_ID = bytes.fromhex("ac08ce34ba4f8123618661bef2425f7028ffb9ac740578a3ee88684d2523fee8")


#: BlobType by value, without the enum's call (a pack header or index record per blob)
BLOB_TYPES = (BlobType.DATA, BlobType.TREE)
