"""Key files both ways with restic, KDF parameters, wrong passwords (spec §4, §19 check 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cairn.backend.base import FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.errors import UsageError, WrongPasswordError
from cairn.repo import keys
from cairn.repo.config import Config
from cairn.repo.crypto import Key
from cairn.repo.keys import KdfParams, build_key_file, default_kdf
from cairn.repo.repository import Repository
from tests.conftest import run_restic
from tests.repo.repo_util import KDF, PASSWORD, new_repo, random_chunks, save_file_snapshot

RESTIC_KEY_ORDER = ["created", "username", "hostname", "kdf", "N", "r", "p", "salt", "data"]


def test_key_file_layout(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    assert repo.key_name is not None
    raw = (tmp_path / "r" / "keys" / repo.key_name).read_bytes()
    doc = json.loads(raw)
    assert list(doc) == RESTIC_KEY_ORDER
    assert raw == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert not raw.endswith(b"\n")
    assert (doc["kdf"], doc["N"], doc["r"], doc["p"]) == ("scrypt", *KDF.__dict__.values())
    import base64

    assert len(base64.b64decode(doc["salt"])) == 64


def test_restic_added_key_opens_in_cairn(tmp_path: Path) -> None:
    path = tmp_path / "r"
    new_repo(path).close()
    pwfile = tmp_path / "new-pw"
    pwfile.write_text("restic-made-password\n")  # restic trims the newline
    run_restic(path, "key", "add", "--new-password-file", str(pwfile), password=PASSWORD)
    repo = Repository.open(LocalBackend(path), "restic-made-password")
    first = Repository.open(LocalBackend(path), PASSWORD)
    assert repo.key == first.key
    assert repo.key_name != first.key_name


def test_cairn_added_key_opens_in_restic(tmp_path: Path) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    save_file_snapshot(repo, {b"f": random_chunks(3, 100)})
    name = repo.add_key("cairn-second", KdfParams(2048, 8, 2))
    assert name in {fi.name for fi in repo.backend.list(FileType.KEY)}
    out = run_restic(path, "snapshots", "--json", password="cairn-second").stdout
    assert len(json.loads(out)) == 1
    assert Repository.open(LocalBackend(path), "cairn-second", key_hint=name[:8]).key_name == name


def test_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "r"
    new_repo(path).add_key("other", KDF)
    with pytest.raises(WrongPasswordError):
        Repository.open(LocalBackend(path), "not-the-password")


def test_unclamped_r_master_key_works_both_ways(tmp_path: Path) -> None:
    """Newer restic stores mac.r unclamped; both cairn and restic 0.14 must cope."""
    path = tmp_path / "r"
    backend = LocalBackend(path)
    backend.create()
    master = Key(os.urandom(32), os.urandom(16), b"\xff" * 16)
    keys.add_key(backend, master, PASSWORD, KDF)
    backend.save(Handle(FileType.CONFIG), master.seal(Config.new().encode()))
    repo = Repository.open(LocalBackend(path), PASSWORD)
    assert repo.key.mac_r == b"\xff" * 16  # kept as stored, clamped on use
    save_file_snapshot(repo, {b"f": random_chunks(2, 1000)})
    # A key added by cairn rewraps the master key unchanged.
    repo.add_key("again", KDF)
    assert Repository.open(LocalBackend(path), "again").key == master
    repo.close()
    proc = run_restic(path, "check", "--read-data", password="again")
    assert b"no errors were found" in proc.stdout


def test_kdf_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.KDF_ENV, "4096,8,3")
    assert default_kdf() == KdfParams(4096, 8, 3)
    monkeypatch.setenv(keys.KDF_ENV, "1000,8,1")  # N not a power of two
    with pytest.raises(UsageError, match="CAIRN_KDF_PARAMS"):
        default_kdf()
    monkeypatch.setenv(keys.KDF_ENV, "bogus")
    with pytest.raises(UsageError):
        default_kdf()


def test_calibration_never_weaker_than_restic() -> None:
    params = keys.calibrate_kdf()
    assert (params.n, params.r) == (32768, 8) and params.p >= 1


@pytest.mark.parametrize(("n", "r", "p"), [(1, 8, 1), (3, 8, 1), (1024, 0, 1), (1024, 8, 0)])
def test_invalid_params_rejected(n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError):
        build_key_file(Key.random(), "pw", KdfParams(n, r, p))


def test_twenty_key_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r"
    repo = new_repo(path)
    monkeypatch.setattr(keys, "MAX_KEYS_TRIED", 2)
    for i in range(3):
        repo.add_key(f"extra-{i}", KDF)
    # With a hint the right key is tried first even past the limit.
    target = repo.add_key("late", KDF)
    assert Repository.open(LocalBackend(path), "late", key_hint=target).key_name == target
