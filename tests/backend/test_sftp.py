"""The SFTP backend against a real OpenSSH server on 127.0.0.1: the shared contract, restic's
URL rules, and the failures users meet (refused port, wrong key, changed host key, a server
that dies mid-transfer)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.backend.base import Backend, FileType, Handle
from cairn.backend.location import open_backend
from cairn.backend.retry import RetryBackend, RetryEvent
from cairn.backend.sftp import (
    SSH_DEFAULT_OPTIONS,
    SFTPBackend,
    SFTPConfig,
    _PipeChannel,
    build_command,
    from_location,
    parse_location,
    with_options,
)
from cairn.errors import (
    AuthenticationError,
    BackendError,
    BackendLocationError,
    TransientBackendError,
)
from tests.backend.contract import BackendContract, new_id
from tests.backend.sshd import (  # noqa: F401 - fixtures
    HOST_ALIAS,
    SSHServer,
    free_port,
    private_sshd,
    sshd,
    write_client_config,
)
from tests.conftest import run_restic


def open_sftp(server: SSHServer, path: Path, **options: str) -> Backend:
    opts = {"sftp.command": server.ssh_command(), "sftp.connections": "2"} | options
    # the bare backend: these tests pin how it fails (RetryBackend is tested on top of it)
    return open_backend(f"sftp:{HOST_ALIAS}:{path}", opts, retries=None)


class TestSFTP(BackendContract):
    @pytest.fixture
    def backend(self, sshd: SSHServer, tmp_path: Path) -> Iterator[Backend]:  # noqa: F811
        b = open_sftp(sshd, tmp_path / "repo")
        b.create()
        yield b
        b.close()

    @pytest.fixture
    def bare_backend(self, sshd: SSHServer, tmp_path: Path) -> Iterator[Backend]:  # noqa: F811
        with open_sftp(sshd, tmp_path / "bare") as b:
            yield b

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        """The connection drops after 1 MiB of the upload went out."""
        real_send = _PipeChannel.send
        sent = 0

        def send(self: _PipeChannel, data: bytes | memoryview) -> int:
            nonlocal sent
            sent += len(data)
            if sent > 1 << 20:
                self.broken = True
            return real_send(self, data)

        monkeypatch.setattr(_PipeChannel, "send", send)


def test_layout_on_the_server(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "repo"
    with open_sftp(sshd, root) as b:
        b.create()
        assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
        assert {p.name for p in root.iterdir()} == {"data", "index", "keys", "locks", "snapshots"}
        h = Handle(FileType.PACK, new_id("9e"))
        b.save(h, b"pack")
        path = root / "data" / "9e" / h.name
        assert path.read_bytes() == b"pack"
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.listdir(path.parent) == [h.name], "the temporary file is gone"


def test_url_form_with_port_and_args(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    """sftp://user@host:port//abs/path, reaching the server through sftp.args."""
    url = f"sftp://root@127.0.0.1:{sshd.port}/{tmp_path}/repo"
    with open_backend(url, {"sftp.args": sshd.ssh_args()}, retries=None) as b:
        assert isinstance(b, SFTPBackend)
        b.create()
        h = Handle(FileType.KEY, new_id())
        b.save(h, b"key")
    assert (tmp_path / "repo" / "keys" / h.name).read_bytes() == b"key"


def test_restic_sees_the_same_repository(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    """restic init over the same server; our listing and loads find what it wrote."""
    root = tmp_path / "restic-repo"
    url = f"sftp:{HOST_ALIAS}:{root}"
    run_restic(url, "-o", f"sftp.command={sshd.ssh_command()}", "init")
    with open_sftp(sshd, root) as b:
        keys = list(b.list(FileType.KEY))
        assert len(keys) == 1
        key_file = root / "keys" / keys[0].name
        assert b.load(Handle(FileType.KEY, keys[0].name)) == key_file.read_bytes()
        assert b.stat(Handle(FileType.CONFIG)) == (root / "config").stat().st_size


# --- URL parsing (restic's own test table, internal/backend/sftp/config_test.go) ------


@pytest.mark.parametrize(
    ("url", "user", "host", "port", "path"),
    [
        ("sftp://user@host/dir/subdir", "user", "host", "", "dir/subdir"),
        ("sftp://host/dir/subdir", "", "host", "", "dir/subdir"),
        ("sftp://host//dir/subdir", "", "host", "", "/dir/subdir"),
        ("sftp://host:10022//dir/subdir", "", "host", "10022", "/dir/subdir"),
        ("sftp://user@host:10022//dir/subdir", "user", "host", "10022", "/dir/subdir"),
        ("sftp://user@host/dir/subdir/../other", "user", "host", "", "dir/other"),
        ("sftp://user@host/dir///subdir", "user", "host", "", "dir/subdir"),
        ("sftp://user@[::1]/dir", "user", "::1", "", "dir"),
        ("sftp://user@[::1]:22/dir", "user", "::1", "22", "dir"),
        ("sftp://us%20er@host/a%20b", "us er", "host", "", "a b"),
        ("sftp:user@host:/dir/subdir", "user", "host", "", "/dir/subdir"),
        ("sftp:user@domain@host:/dir/subdir", "user@domain", "host", "", "/dir/subdir"),
        ("sftp:host:../dir/subdir", "", "host", "", "../dir/subdir"),
        ("sftp:user@host:dir/subdir:suffix", "user", "host", "", "dir/subdir:suffix"),
        ("sftp:user@host:dir/subdir/../other", "user", "host", "", "dir/other"),
        ("sftp:user@host:dir///subdir", "user", "host", "", "dir/subdir"),
        ("sftp:host:relative/path", "", "host", "", "relative/path"),
        ("sftp:host:", "", "host", "", "."),
    ],
)
def test_parse_location(url: str, user: str, host: str, port: str, path: str) -> None:
    cfg = parse_location(url.removeprefix("sftp:"))
    assert (cfg.user, cfg.host, cfg.port, cfg.path) == (user, host, port, path)


@pytest.mark.parametrize(
    "url",
    [
        "sftp://host:dir",  # restic's invalid example: the port is not a number
        "sftp://host",  # no directory
        "sftp:hostonly",
        "sftp::/path",
        "sftp:-oProxyCommand=x:/path",  # would be taken for an ssh option
        "sftp:host:~/repo",
        "sftp://[::1/dir",
    ],
)
def test_malformed_locations(url: str) -> None:
    with pytest.raises(BackendLocationError):
        parse_location(url.removeprefix("sftp:"))


def test_options() -> None:
    cfg = parse_location("user@host:/r")
    assert with_options(cfg, {"s3.region": "x"}).connections == 5
    assert with_options(cfg, {"sftp.connections": "3"}).connections == 3
    for bad in ({"sftp.connections": "0"}, {"sftp.connections": "many"}, {"sftp.conections": "2"}):
        with pytest.raises(BackendLocationError):
            with_options(cfg, bad)
    with pytest.raises(BackendLocationError, match="both"):
        with_options(cfg, {"sftp.command": "ssh h -s sftp", "sftp.args": "-v"})


def test_ssh_command_line() -> None:
    """restic's order (internal/backend/sftp/sshcmd_test.go) plus our bounded-time options."""
    cases = [
        (SFTPConfig(host="host", path="d", user="user"), ["host", "-l", "user"]),
        (SFTPConfig(host="host", path="d"), ["host"]),
        (SFTPConfig(host="host", path="d", port="10022"), ["host", "-p", "10022"]),
        (
            SFTPConfig(host="host", path="d", user="user", port="10022", args="-i /p/id_rsa"),
            ["host", "-p", "10022", "-l", "user", "-i", "/p/id_rsa"],
        ),
        (SFTPConfig(host="::1", path="d", user="user"), ["::1", "-l", "user"]),
    ]
    for cfg, head in cases:
        argv = build_command(cfg, interactive=True)
        assert argv == ["ssh", *head, *SSH_DEFAULT_OPTIONS, "-s", "sftp"]
        batch = build_command(cfg, interactive=False)
        assert batch == ["ssh", *head, *SSH_DEFAULT_OPTIONS, "-o", "BatchMode=yes", "-s", "sftp"]
    custom = SFTPConfig(host="h", path="d", command="ssh -F '/a b/cfg' other -s sftp")
    assert build_command(custom, interactive=False) == [
        "ssh",
        "-F",
        "/a b/cfg",
        "other",
        "-s",
        "sftp",
    ]


# --- the failures users meet ---------------------------------------------------------


def test_refused_port_fails_fast_with_one_clear_error(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        from_location(f"//root@127.0.0.1:{port}//{tmp_path}", {"sftp.args": sshd.ssh_args()})
    assert time.monotonic() - start < 10
    assert not isinstance(info.value, AuthenticationError | TransientBackendError)
    message = str(info.value)
    assert "127.0.0.1" in message and "Connection refused" in message
    assert "\n" not in message


def test_wrong_user_key_is_an_authentication_error(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "ssh_config"
    write_client_config(config, sshd.port, sshd.other_identity, sshd.known_hosts)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        from_location(
            f"{HOST_ALIAS}:{tmp_path}/repo",
            {"sftp.command": f"ssh -F {config} {HOST_ALIAS} -s sftp"},
        )


@pytest.mark.parametrize("known", ["changed", "unknown"])
def test_host_key_problems_are_authentication_errors(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
    known: str,
) -> None:
    known_hosts = tmp_path / "known_hosts"
    if known == "changed":
        # the user key's public half stands in for "some other host key"
        other = " ".join(Path(f"{sshd.other_identity}.pub").read_text().split()[:2])
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    else:
        known_hosts.write_text("")
    config = tmp_path / "ssh_config"
    write_client_config(config, sshd.port, sshd.identity, known_hosts)
    with pytest.raises(AuthenticationError, match="Host key verification failed"):
        from_location(
            f"{HOST_ALIAS}:{tmp_path}/repo",
            {"sftp.command": f"ssh -F {config} {HOST_ALIAS} -s sftp"},
        )


def test_missing_ssh_program(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot start"):
        from_location(f"h:{tmp_path}", {"sftp.command": "/nonexistent/ssh h -s sftp"})


def test_server_dying_mid_transfer_is_an_error_not_a_hang(
    private_sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    b = open_sftp(private_sshd, tmp_path / "repo", **{"sftp.connections": "1"})
    b.create()
    small = Handle(FileType.INDEX, new_id())
    b.save(small, b"index")
    errors: list[BaseException] = []
    started = threading.Event()

    def big_upload() -> None:
        started.set()
        try:
            b.save(Handle(FileType.PACK, new_id()), os.urandom(256 << 20))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=big_upload)
    t.start()
    started.wait()
    time.sleep(0.3)
    private_sshd.kill_all()
    t.join(timeout=30)
    assert not t.is_alive(), "the upload hangs after the server died"
    assert len(errors) == 1 and isinstance(errors[0], TransientBackendError), errors
    assert "connection lost" in str(errors[0])
    # the next request tries a new connection, which is refused: an error, quickly
    start = time.monotonic()
    with pytest.raises(BackendError, match="Connection refused"):
        b.load(small)
    assert time.monotonic() - start < 10
    b.close()
    # nothing partial under a final name
    assert [p.name for p in (tmp_path / "repo" / "index").iterdir()] == [small.name]
    packs = [p for d in (tmp_path / "repo" / "data").iterdir() for p in d.iterdir()]
    assert all("-restic-temp-" in p.name for p in packs)


def test_server_that_stops_answering_is_detected(
    private_sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A frozen server (SIGSTOP) is noticed through ssh's keepalives, not waited on forever."""
    fast_keepalive = private_sshd.ssh_command(
        "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"
    )
    b = open_sftp(
        private_sshd, tmp_path / "repo", **{"sftp.command": fast_keepalive, "sftp.connections": "1"}
    )
    b.create()
    h = Handle(FileType.SNAPSHOT, new_id())
    b.save(h, b"snapshot")
    for pid in private_sshd.descendants():
        os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(TransientBackendError):
            b.load(h)
        assert time.monotonic() - start < 15
    finally:
        private_sshd.kill_all()
        b.close()


def test_retry_reconnects_after_a_dropped_connection(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RetryBackend over SFTP: a connection that drops mid-upload is replaced and the
    save completes on a fresh ssh process."""
    inner = open_sftp(sshd, tmp_path / "repo")
    inner.create()
    real_send = _PipeChannel.send
    dropped: list[int] = []

    def send(self: _PipeChannel, data: bytes | memoryview) -> int:
        if not dropped and len(data) > 1000:
            dropped.append(1)
            self.broken = True
        return real_send(self, data)

    monkeypatch.setattr(_PipeChannel, "send", send)
    events: list[RetryEvent] = []
    with RetryBackend(inner, base_delay=0.01, log=events.append) as b:
        h = Handle(FileType.PACK, new_id())
        payload = os.urandom(300_000)
        b.save(h, payload)
        assert b.load(h) == payload
    assert dropped and len(events) == 1 and "connection lost" in str(events[0])
