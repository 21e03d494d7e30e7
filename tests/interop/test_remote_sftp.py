"""cairn and restic sharing a repository on a real OpenSSH server, through the real CLI:
round trips both ways, the failures users meet (refused port, silent server, wrong key,
changed host key) and a server that dies in the middle of a backup."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cairn.backend.base import FileType, Handle
from cairn.backend.location import open_backend
from cairn.backend.retry import RetryBackend
from cairn.backend.sftp import _PipeChannel
from tests.backend.contract import new_id
from tests.backend.sshd import (  # noqa: F401 - fixtures
    HOST_ALIAS,
    SSHServer,
    free_port,
    private_sshd,
    sshd,
    start_sshd,
    write_client_config,
)
from tests.cli.conftest import run_cairn
from tests.conftest import run_restic
from tests.interop.remote_common import backup_in_background
from tests.treecompare import describe


def url(path: Path) -> str:
    return f"sftp:{HOST_ALIAS}:{path}"


def via(server: SSHServer, path: Path) -> list[str]:
    """Global cairn/restic arguments that reach ``path`` on ``server``."""
    return ["-r", url(path), "-o", f"sftp.command={server.ssh_command()}"]


def restic(server: SSHServer, path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """restic over SFTP (the URL is not a local path, so the cache location is explicit)."""
    return run_restic(
        url(path),
        "-o",
        f"sftp.command={server.ssh_command()}",
        *args,
        env={"RESTIC_CACHE_DIR": str(path.parent / "restic-cache")},
    )


def make_source(root: Path, files: int = 40, big: int = 3 << 20) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(files):
        (root / ("sub" if i % 2 else "sub/deeper") / f"f{i:02d}.txt").write_bytes(
            f"file {i}\n".encode() * (i * 50)
        )
    (root / "big.bin").write_bytes(os.urandom(big))
    (root / "empty").write_bytes(b"")
    os.symlink("big.bin", root / "link")
    return root


def restored(target: Path, src: Path) -> dict[bytes, dict[str, object]]:
    return describe(target / str(src).lstrip("/"))


def snapshot_ids(server: SSHServer, repo: Path) -> list[str]:
    out = restic(server, repo, "snapshots", "--json").stdout
    return [s["id"] for s in json.loads(out)]


def one_error_line(stderr: bytes) -> str:
    """The single ``cairn: ...`` error line a failure must print (besides one notice per
    retried request, which says "retrying")."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.startswith("cairn:")]
    errors = [ln for ln in lines if "; retrying in " not in ln]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr.decode(errors="replace")
    return errors[0]


# --- round trips ----------------------------------------------------------------------


def test_cairn_and_restic_share_a_repository_over_sftp(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    src = make_source(tmp_path / "src")
    run_cairn(*via(sshd, repo), "init")
    run_cairn(*via(sshd, repo), "backup", str(src))
    run_cairn(*via(sshd, repo), "check", "--read-data")
    run_cairn(*via(sshd, repo), "restore", "latest", "--target", str(tmp_path / "c1"))
    assert restored(tmp_path / "c1", src) == describe(src)

    # restic, through the same server, checks every byte and restores what cairn wrote
    assert b"no errors were found" in restic(sshd, repo, "check", "--read-data").stdout
    restic(sshd, repo, "restore", "latest", "--target", str(tmp_path / "r1"))
    assert restored(tmp_path / "r1", src) == describe(src)

    # restic adds a snapshot; cairn restores that one
    (src / "sub" / "added-by-restic.txt").write_text("restic was here\n")
    restic(sshd, repo, "backup", str(src))
    latest = snapshot_ids(sshd, repo)[-1]
    run_cairn(*via(sshd, repo), "restore", latest, "--target", str(tmp_path / "c2"))
    assert restored(tmp_path / "c2", src) == describe(src)
    run_cairn(*via(sshd, repo), "check")


def test_cairn_restores_a_repository_restic_created_over_sftp(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    src = make_source(tmp_path / "src", files=10, big=1 << 20)
    restic(sshd, repo, "init")
    restic(sshd, repo, "backup", str(src))
    run_cairn(*via(sshd, repo), "restore", "latest", "--target", str(tmp_path / "out"))
    assert restored(tmp_path / "out", src) == describe(src)
    # and cairn's next snapshot goes on top of restic's
    run_cairn(*via(sshd, repo), "backup", str(src))
    assert len(snapshot_ids(sshd, repo)) == 2


def test_open_backend_retries_sftp_and_reports_each_retry(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL gets the retry policy: a connection lost mid-upload costs one logged line."""
    lines: list[str] = []
    opts = {"sftp.command": sshd.ssh_command()}
    with open_backend(url(tmp_path / "repo"), opts, log=lines.append) as b:
        assert isinstance(b, RetryBackend)
        b.create()
        real_send = _PipeChannel.send
        dropped: list[int] = []

        def send(self: _PipeChannel, data: bytes | memoryview) -> int:
            if not dropped and len(data) > 1000:
                dropped.append(1)
                self.broken = True
            return real_send(self, data)

        monkeypatch.setattr(_PipeChannel, "send", send)
        h = Handle(FileType.PACK, new_id())
        payload = os.urandom(200_000)
        b.save(h, payload)
        assert b.load(h) == payload
    assert dropped and len(lines) == 1
    assert "connection lost" in lines[0] and "retrying in" in lines[0]


# --- bad input: one line, an exit code, within a bounded time ----------------------------


def test_refused_port_fails_fast(sshd: SSHServer, tmp_path: Path) -> None:  # noqa: F811
    start = time.monotonic()
    proc = run_cairn(
        "-r",
        f"sftp://root@127.0.0.1:{free_port()}//{tmp_path}/repo",
        "-o",
        f"sftp.args={sshd.ssh_args()}",
        "snapshots",
        expect=None,
    )
    assert time.monotonic() - start < 10
    assert proc.returncode == 1
    assert "Connection refused" in one_error_line(proc.stderr)


def test_silent_server_fails_within_the_connect_timeout(
    sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A port that accepts TCP but never speaks SSH (a wedged host, a wrong service)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes handshakes; nobody ever answers
        port = listener.getsockname()[1]
        start = time.monotonic()
        proc = run_cairn(
            "-r",
            f"sftp://root@127.0.0.1:{port}//{tmp_path}/repo",
            "-o",
            f"sftp.args={sshd.ssh_args('-o', 'ConnectTimeout=2')}",
            "snapshots",
            expect=None,
        )
        elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < 15
    assert "timed out" in one_error_line(proc.stderr).lower()


@pytest.mark.parametrize("problem", ["wrong user key", "changed host key"])
def test_authentication_failures(sshd: SSHServer, tmp_path: Path, problem: str) -> None:  # noqa: F811
    identity, known_hosts = sshd.identity, sshd.known_hosts
    if problem == "wrong user key":
        identity = sshd.other_identity
        expected = "Permission denied"
    else:
        known_hosts = tmp_path / "known_hosts"
        impostor = " ".join(Path(f"{sshd.other_identity}.pub").read_text().split()[:2])
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
        expected = "Host key verification failed"
    config = tmp_path / "ssh_config"
    write_client_config(config, sshd.port, identity, known_hosts)
    proc = run_cairn(
        "-r",
        url(tmp_path / "repo"),
        "-o",
        f"sftp.command=ssh -F {config} {HOST_ALIAS} -s sftp",
        "init",
        expect=None,
    )
    assert proc.returncode == 1
    assert expected in one_error_line(proc.stderr)
    assert not (tmp_path / "repo").exists()


# --- the server dies in the middle of a backup ---------------------------------------


def test_server_killed_mid_backup(
    private_sshd: SSHServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}.bin").write_bytes(os.urandom(12 << 20))
    run_cairn(*via(private_sshd, repo), "init")
    backup = backup_in_background(*via(private_sshd, repo), src=src, repo=repo)
    private_sshd.kill_all()
    killed = time.monotonic()
    _, stderr = backup.communicate(timeout=60)
    assert time.monotonic() - killed < 30, "the backup hangs after the server died"
    assert backup.returncode == 1
    line = one_error_line(stderr)
    assert "Connection refused" in line or "connection lost" in line, stderr
    assert not list((repo / "snapshots").iterdir())

    # what is on the server is a valid repository (the lock left behind is stale) ...
    run_restic(repo, "unlock")
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout

    # ... and with the server back, the next backup completes
    server = start_sshd(tmp_path / "sshd-again")
    try:
        run_cairn(*via(server, repo), "backup", str(src))
        run_cairn(*via(server, repo), "check")
    finally:
        server.stop()
    assert len(list((repo / "snapshots").iterdir())) == 1
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
