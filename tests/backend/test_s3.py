"""The S3 backend against a real Ceph radosgw (and moto as a fast extra tier), with restic.

radosgw starts once per session (tests/backend/radosgw.py); CAIRN_TEST_S3_URL with AWS
credentials in the environment points the same tests at any other endpoint.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cairn.backend.base import Backend, FileType, Handle
from cairn.backend.location import open_backend  # retries=None: these tests pin the bare backend
from cairn.backend.s3 import S3Backend, S3Location, from_location
from cairn.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendError,
    BackendLocationError,
    NotFoundError,
    UsageError,
)
from tests.backend.contract import BackendContract, listing, new_id
from tests.backend.http_faults import break_next_large_send
from tests.backend.radosgw import S3Server, free_port
from tests.backend.repo_copy import download_repo, upload_repo
from tests.conftest import FIXTURE_PASSWORD, run_restic

MiB = 1024 * 1024
_counter = itertools.count()


_sessions: dict[tuple[str, str, str], boto3.session.Session] = {}


def session_for(server: S3Server) -> boto3.session.Session:
    """One boto3 session per server: building clients from it reuses the loaded models."""
    key = (server.endpoint, server.access_key, server.secret_key)
    if key not in _sessions:
        _sessions[key] = boto3.session.Session(
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
    return _sessions[key]


def new_bucket(server: S3Server) -> str:
    name = f"cairn-{uuid.uuid4().hex[:12]}"
    session_for(server).client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=name)
    return name


def s3_backend(server: S3Server, bucket: str, prefix: str, **kwargs: object) -> S3Backend:
    where = S3Location(f"{server.endpoint}/{bucket}/{prefix}")
    return S3Backend(where, session=session_for(server), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield S3Server(f"http://{host}:{port}", "moto-key", "moto-secret")
    srv.stop()


@pytest.fixture(scope="module")
def rgw_bucket(radosgw_s3: S3Server) -> str:  # noqa: F811 - the fixture
    return new_bucket(radosgw_s3)


@pytest.fixture
def s3_env(radosgw_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:  # noqa: F811
    """radosgw's credentials in the environment, where boto3's default chain finds them."""
    for k, v in radosgw_s3.env().items():
        monkeypatch.setenv(k, v)
    return radosgw_s3


class TestS3Radosgw(BackendContract):
    """The contract on a real Ceph object store; every test gets its own prefix."""

    large_size = 24 * MiB  # memstore on a busy machine is slow; still a multipart upload

    @pytest.fixture
    def backend(self, radosgw_s3: S3Server, rgw_bucket: str) -> Iterator[Backend]:  # noqa: F811
        b = s3_backend(radosgw_s3, rgw_bucket, f"c{next(_counter)}", multipart_threshold=16 * MiB)
        b.create()
        yield b
        b.close()

    @pytest.fixture
    def bare_backend(self, radosgw_s3: S3Server, rgw_bucket: str) -> Iterator[Backend]:  # noqa: F811
        b = s3_backend(radosgw_s3, rgw_bucket, f"bare{next(_counter)}")
        yield b
        b.close()

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        break_next_large_send(monkeypatch)


class TestS3Moto(BackendContract):
    """The same contract on moto (fast, low fidelity), with the empty prefix."""

    @pytest.fixture
    def backend(self, moto: S3Server) -> Iterator[Backend]:
        b = s3_backend(moto, f"moto-{next(_counter)}", "", multipart_threshold=16 * MiB)
        b.create()
        yield b
        b.close()

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        break_next_large_send(monkeypatch)


# --- URLs and options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint", "bucket", "prefix"),
    [
        ("https://h:9000/b/p/q", "https://h:9000", "b", "p/q"),
        ("http://h/b", "http://h", "b", ""),
        ("h.example/b/p/", "https://h.example", "b", "p"),
        ("//h/b//p/./x/../y", "https://h", "b", "p/y"),
        ("s3.amazonaws.com/mybucket/backups/host1", None, "mybucket", "backups/host1"),
    ],
)
def test_location(url: str, endpoint: str | None, bucket: str, prefix: str) -> None:
    where = S3Location(url)
    assert (where.endpoint, where.bucket, where.prefix) == (endpoint, bucket, prefix)


@pytest.mark.parametrize("url", ["", "host", "host/", "http://host", "/bucket"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises(BackendLocationError):
        S3Location(url)


def test_options_and_addressing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    b = from_location("http://127.0.0.1:1/b", {"s3.region": "eu-west-3", "s3.connections": "7"})
    assert b.region == "eu-west-3" and b.connections == 7
    assert b._client.meta.config.s3["addressing_style"] == "path"  # auto, not AWS
    dns = from_location("http://127.0.0.1:1/b", {"s3.bucket-lookup": "dns"})
    assert dns._client.meta.config.s3["addressing_style"] == "virtual"
    with pytest.raises(UsageError):
        from_location("http://h/b", {"s3.bucket-lookup": "sideways"})
    with pytest.raises(UsageError):
        from_location("http://h/b", {"s3.unknown": "1"})


def test_keys_follow_the_layout(moto: S3Server) -> None:
    bucket = new_bucket(moto)
    for prefix, expect in [("", ""), ("a/b", "a/b/")]:
        b = s3_backend(moto, bucket, prefix)
        pack = new_id("21")
        b.save(Handle(FileType.PACK, pack), b"p")
        b.save(Handle(FileType.KEY, pack), b"k")
        b.save(Handle(FileType.CONFIG), b"c")
        keys = {
            o["Key"] for o in b._client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        }
        assert {f"{expect}data/21/{pack}", f"{expect}keys/{pack}", f"{expect}config"} <= keys
        b.close()


def test_storage_class_applies(moto: S3Server) -> None:
    bucket = new_bucket(moto)
    b = s3_backend(moto, bucket, "", storage_class="GLACIER")
    pack, snap = Handle(FileType.PACK, new_id()), Handle(FileType.SNAPSHOT, new_id())
    b.save(pack, b"p")
    b.save(snap, b"s")
    head = b._client.head_object
    assert head(Bucket=bucket, Key=pack.relpath()).get("StorageClass") == "GLACIER"
    # archive classes only for data packs, as restic 0.17 does
    assert head(Bucket=bucket, Key=snap.relpath()).get("StorageClass") in (None, "STANDARD")
    b.close()


# --- bucket creation and bad input (radosgw checks signatures, moto does not) ----------


def test_create_makes_the_bucket(s3_env: S3Server) -> None:
    bucket = f"cairn-new-{uuid.uuid4().hex[:8]}"
    b = open_backend(f"s3:{s3_env.endpoint}/{bucket}/repo", retries=None)
    b.create()
    b.save(Handle(FileType.CONFIG), b"cfg")
    with pytest.raises(AlreadyExistsError):
        b.create()
    again = open_backend(f"s3:{s3_env.endpoint}/{bucket}/other", retries=None)
    again.create()  # the bucket exists already: fine
    b.close()
    again.close()


def test_missing_bucket_is_a_clear_error(s3_env: S3Server) -> None:
    b = open_backend(
        f"s3:{s3_env.endpoint}/cairn-no-such-bucket-{uuid.uuid4().hex[:6]}/r", retries=None
    )
    with pytest.raises(BackendError, match="bucket .* does not exist") as info:
        b.stat(Handle(FileType.CONFIG))
    assert not isinstance(info.value, NotFoundError)
    with pytest.raises(BackendError, match="does not exist"):
        list(b.list(FileType.SNAPSHOT))
    with pytest.raises(BackendError, match="does not exist"):
        b.save(Handle(FileType.KEY, new_id()), b"k")
    b.close()


def test_wrong_credentials(
    s3_env: S3Server, rgw_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    b = open_backend(f"s3:{s3_env.endpoint}/{rgw_bucket}/r", retries=None)
    with pytest.raises(AuthenticationError):
        b.stat(Handle(FileType.CONFIG))
    with pytest.raises(AuthenticationError):
        list(b.list(FileType.KEY))
    b.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
    b = open_backend(f"s3:{s3_env.endpoint}/{rgw_bucket}/r", retries=None)
    with pytest.raises(AuthenticationError):
        b.save(Handle(FileType.KEY, new_id()), b"k")
    b.close()


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    b = open_backend(f"s3:http://127.0.0.1:{free_port()}/bucket/r", retries=None)
    start = time.monotonic()
    with pytest.raises(BackendError, match="cannot connect") as info:
        b.stat(Handle(FileType.CONFIG))
    assert time.monotonic() - start < 5 and not info.value.transient
    b.close()


# --- interoperability with restic, through radosgw ------------------------------------


def test_restic_checks_what_cairn_uploaded(
    s3_env: S3Server, rgw_bucket: str, fixture_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    url = f"s3:{s3_env.endpoint}/{rgw_bucket}/restic-reads-{next(_counter)}"
    b = open_backend(url, retries=None)
    assert upload_repo(fixture_repo("v2"), b) > 10
    b.close()
    env = {"RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_restic(url, "check", "--read-data", password=FIXTURE_PASSWORD, env=env)
    assert b"no errors were found" in proc.stdout


def test_cairn_reads_what_restic_wrote(s3_env: S3Server, rgw_bucket: str, tmp_path: Path) -> None:
    url = f"s3:{s3_env.endpoint}/{rgw_bucket}/restic-wrote-{next(_counter)}"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}").write_bytes(bytes(range(256)) * (300 * i + 1))
    env = {"RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    run_restic(url, "init", env=env)
    run_restic(url, "backup", str(src), env=env)
    b = open_backend(url, retries=None)
    assert len(listing(b, FileType.SNAPSHOT)) == 1
    assert download_repo(b, tmp_path / "copy") > 5
    b.close()
    proc = run_restic(tmp_path / "copy", "check", "--read-data", env=env)
    assert b"no errors were found" in proc.stdout
