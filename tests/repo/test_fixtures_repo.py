"""Known answers: cairn reads the three restic-written fixture repositories exactly."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cairn.backend.base import FileType
from cairn.repo.index import encode_index
from cairn.repo.keys import encode_master_key
from cairn.repo.lock import iter_locks
from cairn.repo.snapshot import Snapshot
from tests.conftest import EXPECTED, SECOND_PASSWORD
from tests.repo.repo_util import open_repo

REPOS = ["v2", "v1", "v1-upgraded"]


@pytest.mark.parametrize("name", REPOS)
def test_master_key_and_config(fixture_repo: Callable[[str], Path], name: str) -> None:
    repo = open_repo(fixture_repo(name))
    exp_key = json.loads((EXPECTED / name / "masterkey.restic-cat.json").read_text())
    assert json.loads(encode_master_key(repo.key)) == exp_key
    exp_cfg = json.loads((EXPECTED / name / "config.restic-cat.json").read_text())
    assert json.loads(repo.config.encode()) == exp_cfg
    assert repo.config.version == exp_cfg["version"]


def test_second_key_and_stored_bytes(fixture_repo: Callable[[str], Path]) -> None:
    path = fixture_repo("v2")
    first = open_repo(path)
    second = open_repo(path, SECOND_PASSWORD)
    assert second.key == first.key
    assert second.key_name == "ba8209253439cd81d193e0aaf4427dc6645206a90e251128f8978e94b86a0d2f"
    # The config's stored plaintext is exactly what cairn would encode (spec §17.1).
    plain = first.key.open((path / "config").read_bytes())
    assert plain == first.config.encode()


@pytest.mark.parametrize("name", REPOS)
def test_index_files_decrypt_to_expected_bytes(
    fixture_repo: Callable[[str], Path], name: str
) -> None:
    repo = open_repo(fixture_repo(name))
    names = sorted(fi.name for fi in repo.backend.list(FileType.INDEX))
    expected = sorted(p.stem for p in (EXPECTED / name / "index").glob("*.json"))
    assert names == expected
    for n in names:
        plain = repo.load_file(FileType.INDEX, n)
        assert plain == (EXPECTED / name / "index" / f"{n}.json").read_bytes()


@pytest.mark.parametrize("name", REPOS)
def test_pack_headers_agree_with_index_and_blobs_verify(
    fixture_repo: Callable[[str], Path], name: str
) -> None:
    repo = open_repo(fixture_repo(name))
    repo.load_index()
    by_pack = repo.index.by_pack()
    stored = {bytes.fromhex(fi.name): fi.size for fi in repo.backend.list(FileType.PACK)}
    assert set(by_pack) == set(stored)
    listed = (EXPECTED / name / "list-blobs.txt").read_text().split("\n")
    expected_blobs = {tuple(line.split()) for line in listed if line.strip()}
    assert {(b.type.label, b.id.hex()) for b in repo.index} == expected_blobs
    count = 0
    for pack_id, blobs in by_pack.items():
        header = repo.list_pack_blobs(pack_id, stored[pack_id])
        assert header == blobs
        for blob, data in repo.read_pack_blobs(pack_id, blobs):
            assert isinstance(data, bytes), data
            assert hashlib.sha256(data).digest() == blob.id
            assert len(data) == blob.plaintext_length
            count += 1
    assert count == len(repo.index)


@pytest.mark.parametrize("name", REPOS)
def test_snapshots_decode_and_reencode(fixture_repo: Callable[[str], Path], name: str) -> None:
    repo = open_repo(fixture_repo(name))
    ids = sorted(repo.list_snapshots())
    expected = sorted(p.name.split(".")[0] for p in (EXPECTED / name / "snapshots").iterdir())
    assert ids == expected
    for sid in ids:
        plain = repo.load_file(FileType.SNAPSHOT, sid)
        snap = Snapshot.decode(plain)
        exp = json.loads((EXPECTED / name / "snapshots" / f"{sid}.restic-cat.json").read_text())
        assert json.loads(snap.encode()) == exp
        assert snap.encode() == plain  # byte-identical re-encoding
        assert snap.tree.hex() == exp["tree"]


def test_trees_load(fixture_repo: Callable[[str], Path]) -> None:
    repo = open_repo(fixture_repo("v2"))
    repo.load_index()
    sid, snap = repo.find_snapshot("latest")
    assert sid.startswith("8a3da37d")
    nodes = repo.load_tree(snap.tree)
    assert [n.name for n in nodes] == [b"stdin-data.txt"]


def test_lock_sample_decrypts(fixture_repo: Callable[[str], Path]) -> None:
    path = fixture_repo("v2")
    lock_dir = EXPECTED / "lock"
    lock_file = next(p for p in lock_dir.iterdir() if "." not in p.name)
    shutil.copy(lock_file, path / "locks" / lock_file.name)
    repo = open_repo(path)
    locks = dict(iter_locks(repo.files))
    info = locks[lock_file.name]
    assert info is not None
    exp = json.loads((lock_dir / f"{lock_file.name}.restic-cat.json").read_text())
    assert json.loads(info.encode()) == exp


def test_index_reencodes_identically(fixture_repo: Callable[[str], Path]) -> None:
    """A fixture index with one pack per file order re-encodes byte for byte."""
    repo = open_repo(fixture_repo("v2"))
    name = "f5c670e305d9413f08209f0c945e621503bde227363f6c91d58f0376b799d71c"
    plain = repo.load_file(FileType.INDEX, name)
    repo.load_index()
    by_pack = repo.index.by_pack()
    order = [bytes.fromhex(p["id"]) for p in json.loads(plain)["packs"]]
    assert encode_index((pid, by_pack[pid]) for pid in order) == plain
