"""A real OpenSSH server on 127.0.0.1 for the SFTP tests, and an ssh client setup that reaches it.

:func:`start_sshd` generates a host key and a user key, writes ``sshd_config`` (key-only
login for root, the sftp subsystem served by ``internal-sftp``), starts ``sshd -D -e -f``
on a free port and waits until it accepts connections. It also writes a client
``ssh_config`` (host alias ``cairn-test``) with the user key and a known_hosts file holding
the server's host key under strict checking, so ``ssh -F <cfg> cairn-test`` connects
without touching the user's own ~/.ssh. Everything lives in one temporary directory.

The pytest fixture ``sshd`` (module scope: starting sshd takes ~50 ms, but tests share it)
yields the :class:`SSHServer`; ``kill_all()`` simulates the server dying: the listener and
every per-connection child (which sshd moves into their own sessions) are SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
HOST_ALIAS = "cairn-test"


@dataclass
class SSHServer:
    """A running sshd and the client files that reach it."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]
    client_config: Path  # ssh -F this; host alias HOST_ALIAS
    identity: Path  # the user key that authorized_keys accepts
    other_identity: Path  # a user key that the server does not accept
    known_hosts: Path
    host_public_key: str  # "ssh-ed25519 AAAA..."
    control_dir: Path  # ControlMaster sockets

    def ssh_command(self, *extra: str, alias: str = HOST_ALIAS) -> str:
        """An ``sftp.command`` value that reaches this server as root."""
        return " ".join(["ssh", "-F", str(self.client_config), *extra, alias, "-s", "sftp"])

    def ssh_args(self, *extra: str) -> str:
        """An ``sftp.args`` value for URLs naming 127.0.0.1 and this port directly."""
        return " ".join(["-F", str(self.client_config), *extra])

    def descendants(self) -> list[int]:
        """PIDs of the per-connection sshd processes (children of the listener, recursively)."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
        found: list[int] = []
        frontier = {self.proc.pid}
        while frontier:
            children = {pid for pid, ppid in parents.items() if ppid in frontier}
            found.extend(children)
            frontier = children
        return found

    def kill_all(self) -> None:
        """The server dies: SIGKILL the listener and every session it started."""
        victims = self.descendants()
        self.proc.kill()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop_multiplexers(self) -> None:
        """End the ControlPersist masters that the client config starts."""
        for host in (HOST_ALIAS, "127.0.0.1"):
            subprocess.run(
                ["ssh", "-F", str(self.client_config), "-p", str(self.port), "-O", "exit", host],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
            )
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def stop(self) -> None:
        self.stop_multiplexers()
        if self.proc.poll() is None:
            victims = self.descendants()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _public(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def write_client_config(
    path: Path,
    port: int,
    identity: Path,
    known_hosts: Path,
    alias: str = HOST_ALIAS,
    control_dir: Path | None = None,
) -> None:
    """ssh_config for ``alias`` -> root@127.0.0.1:port, and for 127.0.0.1 itself.

    ``control_dir`` (a short path: unix socket names are limited to 108 bytes) lets later ssh processes ride on the first one's connection (OpenSSH
    ControlMaster): each test opens a backend with fresh ssh processes, and a full key
    exchange costs 0.3-0.5 s on a loaded machine, which would dominate the test time.
    """
    mux = (
        f"  ControlMaster auto\n  ControlPath {control_dir}/%C\n  ControlPersist 60\n"
        if control_dir is not None
        else ""
    )
    common = mux + (
        f"  IdentityFile {identity}\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  LogLevel ERROR\n"
    )
    path.write_text(
        f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n{common}"
        f"Host 127.0.0.1\n{common}"
    )


def start_sshd(directory: Path) -> SSHServer:
    """Start sshd for the current user (root) in ``directory``; see the module docstring."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key, user_key, other_key = (directory / n for n in ("host_key", "id_user", "id_other"))
    for key in (host_key, user_key, other_key):
        _keygen(key)
    (directory / "authorized_keys").write_text(_public(user_key) + "\n")
    # sshd running as root insists on its privilege separation directory; systemd's unit
    # creates it at boot (RuntimeDirectory=sshd), a container may not have it.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    last_error = ""
    for _ in range(5):  # a free port may be taken between probing and binding
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            "PidFile none\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "MaxStartups 100\n"
            "MaxSessions 100\n"
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
        )
        log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log, stdout=log)
        log.close()
        if _wait_listening(port, proc):
            break
        proc.kill()
        proc.wait()
        last_error = (directory / "sshd.log").read_text(errors="replace")
    else:
        raise RuntimeError(f"sshd did not start: {last_error}")

    known_hosts = directory / "known_hosts"
    host_public = _public(host_key)
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    client_config = directory / "ssh_config"
    control_dir = Path(tempfile.mkdtemp(prefix="cairn-ssh-"))
    write_client_config(client_config, port, user_key, known_hosts, control_dir=control_dir)
    return SSHServer(
        dir=directory,
        port=port,
        proc=proc,
        client_config=client_config,
        identity=user_key,
        other_identity=other_key,
        known_hosts=known_hosts,
        host_public_key=host_public,
        control_dir=control_dir,
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A running OpenSSH server for the tests of one module, stopped afterwards."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_sshd(tmp_path: Path) -> Iterator[SSHServer]:
    """A server of its own for a test that kills it."""
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()
