"""The REST backend against a real server (``rclone serve restic``) and the real restic."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from cairn.backend._http import Body, HttpResponse, Transport
from cairn.backend.base import Backend, FileType, Handle
from cairn.backend.location import open_backend  # retries=None: these tests pin the bare backend
from cairn.backend.rest import API_V2, RestBackend, from_location
from cairn.backend.retry import RetryBackend
from cairn.errors import (
    AlreadyExistsError,
    AppendOnlyError,
    AuthenticationError,
    BackendError,
    BackendLocationError,
    UsageError,
)
from tests.backend.contract import BackendContract, listing, new_id
from tests.backend.http_faults import break_next_large_send
from tests.backend.radosgw import free_port
from tests.backend.rclone_server import RestServer, rclone_rest_server
from tests.backend.repo_copy import download_repo, upload_repo
from tests.conftest import FIXTURE_PASSWORD, run_restic

_counter = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    with rclone_rest_server(tmp_path_factory.mktemp("rest") / "root") as srv:
        yield srv


def fresh_url(server: RestServer) -> str:
    return server.repo_url(f"repo{next(_counter)}")


class TestRestContract(BackendContract):
    @pytest.fixture
    def backend(self, server: RestServer) -> Iterator[Backend]:
        b = open_backend(fresh_url(server), retries=None)
        b.create()
        yield b
        b.close()

    @pytest.fixture
    def bare_backend(self, server: RestServer) -> Iterator[Backend]:
        b = open_backend(fresh_url(server), retries=None)
        yield b
        b.close()

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        break_next_large_send(monkeypatch)
        real_save = backend.save

        def save(handle: Handle, data: Body) -> None:
            try:
                real_save(handle, data)
            except BackendError:
                # rclone writes in place and deletes the partial file when it notices the
                # broken upload, a moment later (a server property): wait until the file
                # has stayed absent for a while.
                deadline = time.monotonic() + 10
                absent_since = time.monotonic()
                while time.monotonic() < deadline:
                    if backend.exists(handle):
                        absent_since = time.monotonic()
                    elif time.monotonic() - absent_since > 0.3:
                        break
                    time.sleep(0.02)
                raise

        monkeypatch.setattr(backend, "save", save)

    @pytest.mark.xfail(
        strict=True,
        reason="rclone 1.60 serves a local directory by writing uploads in place, so a "
        "concurrent HEAD or listing sees the growing file (a server property; restic has "
        "the same exposure; rest-server writes a temporary file and renames it)",
    )
    def test_save_is_never_seen_partial(self, backend: Backend) -> None:
        super().test_save_is_never_seen_partial(backend)


# --- URLs and options -------------------------------------------------------------


def test_url_parsing_and_location_hides_the_password() -> None:
    b = from_location("http://alice:s%3Acret@example.org:8000/some/repo/", {})
    assert b.location == "rest:http://alice@example.org:8000/some/repo/"
    assert b.base_path == "/some/repo"
    assert b._headers["authorization"] == "Basic YWxpY2U6czpjcmV0"  # alice:s:cret
    assert b._headers["accept"] == API_V2
    root = from_location("https://example.org/", {})
    assert root.base_path == "" and root.location == "rest:https://example.org/"
    assert "authorization" not in root._headers


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_REST_USERNAME", "bob")
    monkeypatch.setenv("RESTIC_REST_PASSWORD", "pw")
    assert from_location("http://h/r/", {})._headers["authorization"] == "Basic Ym9iOnB3"
    # credentials in the URL win, as in restic
    assert from_location("http://x:y@h/r/", {})._headers["authorization"] == "Basic eDp5"


@pytest.mark.parametrize(
    "url", ["ftp://host/repo", "host/repo", "http://", "http://host:notaport/r", "http://:80/r"]
)
def test_malformed_urls(url: str) -> None:
    with pytest.raises(BackendLocationError):
        from_location(url, {})


def test_options(tmp_path: Path) -> None:
    assert from_location("http://h/r", {"rest.connections": "9"}).connections == 9
    with pytest.raises(UsageError, match="rest.cacert"):
        from_location("https://h/r", {"rest.cacert": str(tmp_path / "missing.pem")})
    with pytest.raises(UsageError, match="unknown option"):
        from_location("http://h/r", {"rest.nonsense": "1"})
    with pytest.raises(UsageError):
        from_location("http://h/r", {"rest.connections": "0"})
    # options of other backends are not ours to refuse
    assert from_location("http://h/r", {"s3.region": "x"}).connections == 5


# --- bad input ----------------------------------------------------------------------


def test_unreachable_server_fails_fast_and_not_transient() -> None:
    b = open_backend(f"rest:http://127.0.0.1:{free_port()}/repo/", retries=None)
    start = time.monotonic()
    with pytest.raises(BackendError, match="cannot connect") as info:
        b.stat(Handle(FileType.CONFIG))
    assert time.monotonic() - start < 5
    assert not info.value.transient  # nothing to retry: the server was never there
    b.close()


def test_server_gone_mid_run_is_transient(tmp_path: Path) -> None:
    with rclone_rest_server(tmp_path / "root") as srv:
        b = open_backend(srv.repo_url("r"), retries=None)
        b.create()
    with pytest.raises(BackendError) as info:
        b.stat(Handle(FileType.CONFIG))
    assert info.value.transient  # it was there: worth retrying, it may come back
    b.close()


def test_authentication(tmp_path: Path) -> None:
    with rclone_rest_server(tmp_path / "root", user="alice", password="secret") as srv:
        good = open_backend(srv.repo_url("r"), retries=None)
        good.create()
        good.save(Handle(FileType.KEY, new_id()), b"key")
        assert len(listing(good, FileType.KEY)) == 1
        good.close()
        for url in [
            srv.repo_url("r").replace(":secret@", ":wrong@"),
            srv.repo_url("r", credentials=False),
        ]:
            bad = open_backend(url, retries=None)
            with pytest.raises(AuthenticationError):
                bad.stat(Handle(FileType.CONFIG))
            with pytest.raises(AuthenticationError):
                list(bad.list(FileType.KEY))
            bad.close()


def test_retry_after_a_broken_upload_with_rclone_object_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rclone's default object cache still reports a file whose upload broke off; saving
    it again must not fail with AlreadyExists (RetryBackend does exactly that)."""
    with rclone_rest_server(tmp_path / "root", cache_objects=True) as srv:
        b = open_backend(srv.repo_url("r"), retries=None)
        b.create()
        h = Handle(FileType.PACK, new_id())
        data = bytes(range(256)) * 8192  # 2 MiB
        break_next_large_send(monkeypatch)
        retrying = RetryBackend(b, base_delay=0.05)
        retrying.save(h, data)  # breaks, then is retried until rclone has cleaned up
        assert b.load(h) == data
        with pytest.raises(AlreadyExistsError):
            b.save(h, data)
        b.close()


def test_append_only_server(tmp_path: Path) -> None:
    with rclone_rest_server(tmp_path / "root", append_only=True) as srv:
        b = open_backend(srv.repo_url("r"), retries=None)
        b.create()
        b.save(Handle(FileType.CONFIG), b"config")
        pack, lock = Handle(FileType.PACK, new_id()), Handle(FileType.LOCK, new_id())
        b.save(pack, b"pack")
        b.save(lock, b"lock")
        with pytest.raises(AppendOnlyError, match="append-only"):
            b.remove(pack)
        with pytest.raises(AppendOnlyError):
            b.remove(Handle(FileType.CONFIG))
        assert b.load(pack) == b"pack"
        b.remove(lock)  # locks may always be removed
        assert not b.exists(lock)
        with pytest.raises(AlreadyExistsError):
            b.save(pack, b"pack")
        with pytest.raises(BackendError, match="config"):
            b.save(Handle(FileType.CONFIG), b"new config")
        assert b.load(Handle(FileType.CONFIG)) == b"config"
        b.close()


# --- API v1 servers ---------------------------------------------------------------------


class V1Server:
    """Turns the answers of a real v2 server into what a v1-only server sends:
    listings as bare names with a v1 Content-Type."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.connections = inner.connections
        self.heads = 0

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: Body | None = None
    ) -> HttpResponse:
        resp = self.inner.request(method, path, headers, body)
        if method == "HEAD":
            self.heads += 1
        if method == "GET" and path.endswith("/") and resp.status == 200:
            import json

            names = [e["name"] for e in json.loads(resp.body)]
            h = {"content-type": "application/vnd.x.restic.rest.v1"}
            return HttpResponse(200, h, json.dumps(names).encode())
        return resp

    def close(self) -> None:
        self.inner.close()


def test_v1_listing_falls_back_to_head(server: RestServer) -> None:
    real = from_location(fresh_url(server)[len("rest:") :], {})
    real.create()
    sizes = {new_id(): n for n in (0, 5, 1000)}
    for name, n in sizes.items():
        real.save(Handle(FileType.SNAPSHOT, name), b"s" * n)
    real.save(Handle(FileType.SNAPSHOT, "not-an-id"), b"x")
    v1 = V1Server(real.transport)
    b = RestBackend(v1, real.base_path, real.location)
    heads = v1.heads
    assert listing(b, FileType.SNAPSHOT) == sizes
    assert v1.heads - heads == len(sizes)  # one HEAD per ID, none for the stray name
    b.close()


# --- interoperability with restic ----------------------------------------------------


def restic_env(tmp_path: Path) -> dict[str, str]:
    return {"RESTIC_CACHE_DIR": str(tmp_path / "restic-cache")}


def test_restic_checks_what_cairn_uploaded(
    server: RestServer, fixture_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    url = fresh_url(server)
    b = open_backend(url, retries=None)
    count = upload_repo(fixture_repo("v2"), b)
    assert count > 10
    b.close()
    proc = run_restic(
        url, "check", "--read-data", password=FIXTURE_PASSWORD, env=restic_env(tmp_path)
    )
    assert b"no errors were found" in proc.stdout


def test_cairn_reads_what_restic_wrote(server: RestServer, tmp_path: Path) -> None:
    url = fresh_url(server)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(bytes(range(256)) * (400 * i + 1))
    env = restic_env(tmp_path)
    run_restic(url, "init", env=env)
    run_restic(url, "backup", str(src), env=env)
    b = open_backend(url, retries=None)
    assert download_repo(b, tmp_path / "copy") > 5
    b.close()
    proc = run_restic(tmp_path / "copy", "check", "--read-data", env=env)
    assert b"no errors were found" in proc.stdout
    restored = run_restic(
        tmp_path / "copy", "restore", "latest", "--target", str(tmp_path / "out"), env=env
    )
    assert restored.returncode == 0
    assert (tmp_path / "out" / src.relative_to("/") / "f4").read_bytes() == (
        src / "f4"
    ).read_bytes()
