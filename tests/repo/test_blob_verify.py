"""Verifying stored blobs without a buffer per blob (check --read-data): decrypting in
place, decompressing into a kept buffer, and BlobVerifier agreeing with open_blob."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cairn.errors import FormatError, IntegrityError
from cairn.repo.compression import compress, decompress_into
from cairn.repo.crypto import Key
from cairn.repo.ids import BlobType
from cairn.repo.index import PackedBlob
from cairn.repo.pack import _SMALL_BLOB, BlobVerifier, open_blob

KEY = Key.random()
#: compressible, and past the size where the verifier keeps its own output buffer
BIG = b"".join(b"line %d of a text-like blob\n" % i for i in range(80_000))
SMALL = b"a small blob " * 40


def _stored(plain: bytes, compressed: bool = True) -> tuple[PackedBlob, bytes]:
    body = compress(plain) if compressed else plain
    sealed = bytes(KEY.seal(body))
    blob = PackedBlob(
        BlobType.DATA,
        hashlib.sha256(plain).digest(),
        bytes(32),
        0,
        len(sealed),
        len(plain) if compressed else 0,
    )
    return blob, sealed


def test_open_in_place_decrypts_where_the_ciphertext_was() -> None:
    plain = os.urandom(1000)
    buf = bytearray(KEY.seal(plain))
    out = KEY.open_in_place(memoryview(buf))
    assert bytes(out) == plain == KEY.open(bytes(KEY.seal(plain)))
    assert bytes(buf[16 : 16 + len(plain)]) == plain  # the same memory, no copy
    assert bytes(KEY.open_in_place(memoryview(bytearray(KEY.seal(b""))))) == b""


def test_open_in_place_checks_the_mac_before_touching_anything() -> None:
    sealed = bytearray(KEY.seal(b"secret" * 100))
    sealed[40] ^= 1
    before = bytes(sealed)
    with pytest.raises(IntegrityError, match="verification failed"):
        KEY.open_in_place(memoryview(sealed))
    assert bytes(sealed) == before
    with pytest.raises(IntegrityError, match="too short"):
        KEY.open_in_place(memoryview(bytearray(10)))


def test_decompress_into_exactly_one_frame_of_the_expected_size() -> None:
    frame = compress(BIG)
    out = bytearray(len(BIG) + 1)
    assert decompress_into(frame, out, len(BIG)) == len(BIG)
    assert bytes(out[: len(BIG)]) == BIG
    with pytest.raises(FormatError, match=f"more than {len(BIG)}"):
        decompress_into(frame + frame, bytearray(2 * len(BIG) + 1), len(BIG))
    with pytest.raises(FormatError, match="expected"):
        decompress_into(frame, bytearray(len(BIG) + 10), len(BIG) + 5)
    with pytest.raises(FormatError):
        decompress_into(frame[: len(frame) // 2], bytearray(len(BIG) + 1), len(BIG))
    with pytest.raises(FormatError, match="cannot decompress"):
        decompress_into(frame + b"junk", bytearray(len(BIG) + 1), len(BIG))
    with pytest.raises(ValueError):
        decompress_into(frame, bytearray(len(BIG)), len(BIG))  # no room to see a longer one


@pytest.mark.parametrize(
    ("plain", "compressed"),
    [(SMALL, True), (BIG, True), (SMALL, False), (BIG, False), (b"", False)],
    ids=["small", "big", "small-uncompressed", "big-uncompressed", "empty"],
)
def test_verifier_accepts_what_open_blob_accepts(plain: bytes, compressed: bool) -> None:
    assert len(BIG) > _SMALL_BLOB > len(SMALL)
    blob, sealed = _stored(plain, compressed)
    assert open_blob(KEY, blob, sealed) == plain
    BlobVerifier(KEY).verify(blob, memoryview(bytearray(sealed)))


def test_verifier_rejects_what_open_blob_rejects() -> None:
    verifier = BlobVerifier(KEY)
    for plain in (SMALL, BIG):
        blob, sealed = _stored(plain)
        flipped = bytearray(sealed)
        flipped[20] ^= 0x40
        with pytest.raises(IntegrityError, match="is damaged"):
            verifier.verify(blob, memoryview(flipped))
        other = PackedBlob(
            blob.type, bytes(32), blob.pack_id, 0, blob.length, blob.uncompressed_length
        )
        with pytest.raises(IntegrityError, match="does not match its ID"):
            verifier.verify(other, memoryview(bytearray(sealed)))
        longer = PackedBlob(
            blob.type, blob.id, blob.pack_id, 0, blob.length, blob.uncompressed_length + 1
        )
        with pytest.raises(IntegrityError, match="expected"):
            verifier.verify(longer, memoryview(bytearray(sealed)))


def test_verifier_keeps_one_output_buffer_for_big_blobs() -> None:
    verifier = BlobVerifier(KEY)
    bigger = BIG + b"more" * 100_000
    for plain in (BIG, bigger, BIG, SMALL):
        blob, sealed = _stored(plain)
        verifier.verify(blob, memoryview(bytearray(sealed)))
    assert len(verifier._out) == len(bigger) + 1


def test_blob_buffer_is_kept_across_packs_and_only_grows(tmp_path: Path) -> None:
    from cairn.ops.packscan import BlobBuffer, PackFile

    buffer = BlobBuffer()
    first, second = tmp_path / "p1", tmp_path / "p2"
    first.write_bytes(b"a" * 5000)
    second.write_bytes(b"b" * 300)
    one = PackFile(first, buffer)
    assert bytes(one.blob(0, 5000)) == b"a" * 5000
    one.close()
    kept = buffer._buf
    two = PackFile(second, buffer)
    view = two.blob(0, 300)
    view[:3] = b"xyz"  # writable: check decrypts in place
    assert bytes(view) == b"xyz" + b"b" * 297
    assert buffer._buf is kept and len(kept) == 5000
    assert two.digest() == hashlib.sha256(b"b" * 300).digest()  # the file, not the buffer
    two.close()
