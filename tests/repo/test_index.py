"""MasterIndex (compact in-memory index) and index-file encoding."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.backend.base import FileType
from cairn.backend.local import LocalBackend
from cairn.errors import FormatError
from cairn.repo.ids import BlobType
from cairn.repo.index import (
    MasterIndex,
    PackedBlob,
    PackEntries,
    _compact_spans,
    _decode_json,
    decode_index,
    encode_index,
    encode_index_parts,
    iter_index,
)
from cairn.repo.keys import KdfParams
from cairn.repo.repository import Repository
from tests.conftest import FIXTURE_PASSWORD


def bid(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "little")).digest()


def synthetic(idx: MasterIndex, n: int, per_pack: int = 100) -> None:
    for p in range(0, n, per_pack):
        pack = bid(-1 - p & 0xFFFFFFFFFFFF)
        entries = [
            (i % 2, bid(i), (i - p) * 1000, 1000, 3000 if i % 3 else 0)
            for i in range(p, min(n, p + per_pack))
        ]
        idx.add_pack(pack, entries)


def test_lookup_roundtrip() -> None:
    idx = MasterIndex()
    synthetic(idx, 5000)
    assert len(idx) == 5000
    for i in (0, 1, 77, 4999):
        pb = idx.lookup(BlobType(i % 2), bid(i))
        assert pb is not None and pb.id == bid(i) and pb.length == 1000
        assert pb.uncompressed_length == (3000 if i % 3 else 0)
        assert pb.plaintext_length == (3000 if i % 3 else 968)
        assert idx.lookup(BlobType(1 - i % 2), bid(i)) is None  # type is part of the key
    assert not idx.has(BlobType.DATA, bid(10**9))
    assert len(idx.pack_ids()) == 50
    assert sorted(b.id for b in idx) == sorted(bid(i) for i in range(5000))


def test_state_roundtrip() -> None:
    """dump_state/load_state give back the same index, which then grows as any other."""
    idx = MasterIndex()
    synthetic(idx, 5000)
    shared = b"\x01" * 8  # IDs that collide in the table's key
    a, b = shared + os.urandom(24), shared + os.urandom(24)
    idx.add_pack(os.urandom(32), [(0, a, 0, 50, 0), (1, b, 50, 60, 70)])
    state = idx.dump_state()

    back = MasterIndex()
    back.load_state(state)
    assert len(back) == len(idx) and back.pack_ids() == idx.pack_ids()
    assert sorted(back, key=lambda p: p.id) == sorted(idx, key=lambda p: p.id)
    assert back.lookup(BlobType.TREE, b).uncompressed_length == 70  # type: ignore[union-attr]
    assert not back.has(BlobType.DATA, b)
    synthetic(back, 9000)  # 5000 of them known already: only the new ones are added
    assert len(back) == 9002 and back.has(BlobType.DATA, bid(8998))
    with pytest.raises(ValueError, match="empty"):
        back.load_state(state)
    for bad in (state[:-4], b"x" * 100, state[:10]):
        with pytest.raises(FormatError):
            MasterIndex().load_state(bad)


def test_duplicates_kept_and_identical_copies_merged() -> None:
    idx = MasterIndex()
    pack_a, pack_b = os.urandom(32), os.urandom(32)
    entry = (0, bid(1), 0, 100, 0)
    idx.add_pack(pack_a, [entry])
    idx.add_pack(pack_a, [entry])  # the same pack listed by two index files
    idx.add_pack(pack_b, [(0, bid(1), 500, 100, 0)])
    copies = idx.lookup_all(BlobType.DATA, bid(1))
    assert {(c.pack_id, c.offset) for c in copies} == {(pack_a, 0), (pack_b, 500)}
    assert len(idx) == 2


def test_colliding_prefixes() -> None:
    """IDs sharing their first 8 bytes are told apart by the rest."""
    idx = MasterIndex()
    a = b"\x01" * 8 + os.urandom(24)
    b = b"\x01" * 8 + os.urandom(24)
    idx.add_pack(os.urandom(32), [(0, a, 0, 50, 0), (0, b, 50, 60, 0)])
    assert idx.lookup(BlobType.DATA, a).length == 50  # type: ignore[union-attr]
    assert idx.lookup(BlobType.DATA, b).length == 60  # type: ignore[union-attr]


def test_concurrent_reads_during_growth() -> None:
    idx = MasterIndex()
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            n = len(idx)
            for i in range(0, n, max(1, n // 50)):
                if not idx.has(BlobType(i % 2), bid(i)):
                    errors.append(f"lost {i}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    synthetic(idx, 30000, per_pack=10)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_memory_per_blob() -> None:
    """Target: <= 64 bytes per blob (1M synthetic blobs measured 60.6 B structures,
    57 B RSS growth per blob)."""
    n = 100_000
    idx = MasterIndex()
    synthetic(idx, n, per_pack=1000)
    assert len(idx) == n
    assert idx.memory_bytes() / n <= 64, idx.memory_bytes() / n


def test_index_file_roundtrip_and_legacy() -> None:
    pack = os.urandom(32)
    blobs = [
        PackedBlob(BlobType.DATA, bid(1), pack, 0, 103, 70),
        PackedBlob(BlobType.TREE, bid(2), pack, 103, 50, 0),
    ]
    text = encode_index([(pack, blobs)])
    assert text.endswith(b"]}]}\n")
    assert b'"uncompressed_length":70' in text and text.count(b"uncompressed_length") == 1
    packs, supersedes = decode_index(text)
    assert supersedes == []
    assert packs == [(pack, [(0, bid(1), 0, 103, 70), (1, bid(2), 103, 50, 0)])]
    legacy = (
        f'[{{"id":"{pack.hex()}","blobs":[{{"id":"{bid(3).hex()}","type":"data","offset":0,'
        f'"length":40}}]}}]'
    ).encode()
    assert decode_index(legacy)[0] == [(pack, [(0, bid(3), 0, 40, 0)])]
    with_sup = encode_index([(pack, blobs)], supersedes=["ab" * 32])
    assert decode_index(with_sup)[1] == ["ab" * 32]


@pytest.mark.parametrize(
    "doc",
    [
        b'{"packs":[{"id":"00","blobs":[]}]}',
        b'{"packs":[{"id":"'
        + b"0" * 64
        + b'","blobs":[{"id":"'
        + b"1" * 64
        + b'","type":"bogus","offset":0,"length":40}]}]}',
        b"42",
    ],
)
def test_invalid_index_files(doc: bytes) -> None:
    with pytest.raises(FormatError):
        decode_index(doc)


def _compact(text: bytes) -> tuple[list[PackEntries], list[str]] | None:
    """What the compact reader makes of ``text``: None when it leaves it to json."""
    if _compact_spans(text) is None:
        return None
    packs, supersedes = iter_index(text)
    return list(packs), supersedes


@pytest.mark.parametrize("name", ["v2", "v1", "v1-upgraded"])
def test_compact_reader_agrees_with_json_on_restic_files(
    fixture_repo: Callable[[str], Path], name: str
) -> None:
    """Index files restic wrote are in the layout the compact reader takes, and it reads
    them exactly as the JSON decoder does."""
    with Repository.open(LocalBackend(fixture_repo(name)), FIXTURE_PASSWORD) as repo:
        names = [fi.name for fi in repo.backend.list(FileType.INDEX)]
        assert names
        for n in names:
            text = repo.files.load(FileType.INDEX, n)
            compact = _compact(text)
            assert compact is not None and compact == _decode_json(text)
            assert sum(len(e) for _, e in compact[0]) > 0


@settings(max_examples=60, deadline=None)
@given(
    packs=st.lists(
        st.tuples(
            st.binary(min_size=32, max_size=32),
            st.lists(
                st.tuples(
                    st.sampled_from([BlobType.DATA, BlobType.TREE]),
                    st.binary(min_size=32, max_size=32),
                    st.integers(0, 2**32 - 1),
                    st.integers(0, 2**32 - 1),
                    st.integers(0, 2**32 - 1),
                ),
                max_size=5,
            ),
        ),
        max_size=4,
    ),
    supersedes=st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=3),
)
def test_compact_reader_agrees_with_json_on_what_cairn_writes(
    packs: list[tuple[bytes, list[tuple[BlobType, bytes, int, int, int]]]], supersedes: list[str]
) -> None:
    doc = [
        (pid, [PackedBlob(t, b, pid, off, ln, ul) for t, b, off, ln, ul in blobs])
        for pid, blobs in packs
    ]
    text = encode_index(doc, supersedes=supersedes)
    compact = _compact(text)
    assert compact is not None and compact == _decode_json(text)
    assert compact[1] == supersedes


def test_other_layouts_go_to_the_json_decoder() -> None:
    """Spaces, another field order or uppercase hex: not the compact layout, same result."""
    pack, blob = bid(7), bid(8)
    want = ([(pack, [(1, blob, 5, 60, 0)])], ["cd" * 32])
    variants = [
        {
            "supersedes": ["cd" * 32],
            "packs": [
                {
                    "id": pack.hex(),
                    "blobs": [{"id": blob.hex(), "type": "tree", "offset": 5, "length": 60}],
                }
            ],
        },
        {
            "packs": [
                {
                    "blobs": [{"type": "tree", "id": blob.hex(), "length": 60, "offset": 5}],
                    "id": pack.hex(),
                }
            ],
            "supersedes": ["cd" * 32],
        },
        {
            "supersedes": ["cd" * 32],
            "packs": [
                {
                    "id": pack.hex().upper(),
                    "blobs": [{"id": blob.hex(), "type": "tree", "offset": 5, "length": 60}],
                }
            ],
        },
    ]
    for doc in variants:
        for text in (json.dumps(doc).encode(), json.dumps(doc, indent=1).encode()):
            if text.startswith(b'{"supersedes": ['):
                assert _compact(text) is None
            assert decode_index(text) == want
    # A truncated file in the compact layout is an error, not a shorter index.
    good = encode_index([(pack, [PackedBlob(BlobType.TREE, blob, pack, 5, 60, 0)])])
    for cut in (len(good) - 3, len(good) // 2):
        assert _compact(good[:cut]) is None
        with pytest.raises(FormatError):
            decode_index(good[:cut])


def test_a_damaged_index_file_fails_before_any_of_its_packs_is_handed_out() -> None:
    """iter_index checks the whole file first: a file damaged in its last pack must not
    put its first packs into an index and then fail (check reports the file, and a
    backup must not trust part of it)."""
    packs = [
        (bid(10 + i), [PackedBlob(BlobType.DATA, bid(20 + i), bid(10 + i), 0, 40, 0)])
        for i in range(3)
    ]
    good = encode_index(packs)
    taken, _ = iter_index(good)
    assert list(taken) == decode_index(good)[0]
    assert len(decode_index(good)[0]) == 3
    last = good.rindex(b'"offset":0')
    damaged = good[:last] + b'"offset":x' + good[last + len(b'"offset":0') :]
    with pytest.raises(FormatError):
        iter_index(damaged)  # raises here, not while the packs are taken


def test_packs_of_an_index_file_are_built_one_at_a_time() -> None:
    """The entries of the second pack do not exist until the first has been taken."""
    pack_a, pack_b = bid(30), bid(31)
    text = encode_index(
        [
            (pack_a, [PackedBlob(BlobType.DATA, bid(32), pack_a, 0, 40, 0)]),
            (pack_b, [PackedBlob(BlobType.TREE, bid(33), pack_b, 0, 50, 0)]),
        ]
    )
    taken, _ = iter_index(text)
    first = next(taken)
    assert first == (pack_a, [(0, bid(32), 0, 40, 0)])
    assert inspect.getgeneratorstate(taken) == inspect.GEN_SUSPENDED  # type: ignore[arg-type]
    assert next(taken) == (pack_b, [(1, bid(33), 0, 50, 0)])


def test_an_index_file_written_a_pack_at_a_time_reads_back(tmp_path: Path) -> None:
    """FileStore.save_parts compresses encode_index_parts as they come: the file loads to
    exactly the text encode_index gives (restic reads such files: the interop tests)."""
    path = tmp_path / "repo"
    Repository.init(LocalBackend(path), "pw", kdf=KdfParams(1024, 8, 1)).close()
    packs = [
        (
            bid(40 + i),
            [
                PackedBlob(BlobType.DATA, bid(50 + j), bid(40 + i), 40 * j, 40, 0)
                for j in range(300)
            ],
        )
        for i in range(5)
    ]
    with Repository.open(LocalBackend(path), "pw") as repo:
        name = repo.files.save_parts(FileType.INDEX, encode_index_parts(packs, ["ab" * 32]))
        assert repo.files.load(FileType.INDEX, name) == encode_index(packs, ["ab" * 32])
        assert b"".join(encode_index_parts([])) == encode_index([]) == b'{"packs":[]}\n'
