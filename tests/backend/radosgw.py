"""A real S3 server for the tests: Ceph's radosgw on one monitor and one memstore OSD.

The recipe is in ``shared/research/dependencies.md`` §6: a throw-away cluster in a
temporary directory, authentication between the daemons switched off, everything on
127.0.0.1 ports picked at start-up, RAM-backed storage. It comes up in about 20 seconds,
so it is started once per test session and the daemons are killed by PID afterwards.

When ``CAIRN_TEST_S3_URL`` is set (e.g. ``http://127.0.0.1:9000``) together with
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, that endpoint is used instead and nothing
is started.

Run ``python -m tests.backend.radosgw`` to start a cluster by hand and keep it up until
Ctrl-C (handy to point restic or boto3 at it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import urllib3

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph-authtool")

_ACCESS_KEY = "CAIRNTESTACCESSKEY01"
_SECRET_KEY = "cairn-test-secret-key-0123456789abcdefghij"


@dataclass
class S3Server:
    """An S3 endpoint the tests may use: URL (scheme://host:port) and credentials."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    #: Log files of the daemons (empty for an external endpoint), shown when start-up fails.
    logs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for boto3, restic or cairn talking to this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def available() -> str | None:
    """None when radosgw can be started here, else the reason it cannot."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return "not installed: " + ", ".join(missing)
    return None


def external_server() -> S3Server | None:
    """The endpoint named by CAIRN_TEST_S3_URL, if any."""
    url = os.environ.get("CAIRN_TEST_S3_URL")
    if not url:
        return None
    return S3Server(
        endpoint=url.rstrip("/"),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def free_port() -> int:
    """A TCP port nobody listens on right now (a small race, acceptable in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_CONF = """\
[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon allow pool size one = true
# The monitor refuses to run when its disk has under 5% free (measured: a host at 95%
# full failed every S3 test); this throw-away cluster keeps its objects in memory.
mon data avail crit = 0
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd max object name len = 460
osd max object namespace len = 64
ms bind ipv6 = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = {d}/keyring
osd data = {d}/osd$id
mon data = {d}/mon
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw dns name = 127.0.0.1
"""


class _Cluster:
    """The three daemons of one throw-away cluster, started in order."""

    def __init__(self, root: Path, memstore_bytes: int) -> None:
        self.root = root
        self.conf = root / "ceph.conf"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._osd_args: tuple[str, ...] = ()
        self._osd: subprocess.Popen[bytes] | None = None
        self.mon_port = free_port()
        self.rgw_port = free_port()
        (root / "run").mkdir()
        (root / "log").mkdir()
        self.fsid = str(uuid.uuid4())
        self.conf.write_text(
            _CONF.format(
                fsid=self.fsid,
                mon_port=self.mon_port,
                rgw_port=self.rgw_port,
                d=root,
                memstore_bytes=memstore_bytes,
            )
        )

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            args, capture_output=True, timeout=timeout, cwd=self.root, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: " + "\n".join(out[:20]))
        return proc.stdout.decode()

    def _daemon(self, *args: str) -> subprocess.Popen[bytes]:
        # -f keeps each daemon in the foreground, so its PID is the Popen's and killing it
        # by PID afterwards is exact.
        log = open(self.root / "log" / f"{args[0]}.out", "wb")  # noqa: SIM115 - lives with proc
        self.procs.append(
            subprocess.Popen(
                [*args, "-f"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        )
        log.close()
        return self.procs[-1]

    def start(self, timeout: float = 120) -> None:
        c = str(self.conf)
        d = self.root
        self._run(
            "ceph-authtool", "--create-keyring", str(d / "keyring"), "--gen-key",
            "-n", "mon.", "--cap", "mon", "allow *",
        )  # fmt: skip
        self._run(
            "monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{self.mon_port}",
            "--fsid", self.fsid, str(d / "monmap"),
        )  # fmt: skip
        self._run(
            "ceph-mon", "-c", c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
            "--keyring", str(d / "keyring"),
        )  # fmt: skip
        self._daemon("ceph-mon", "-c", c, "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "-c", c, "--connect-timeout", "30", "osd", "new", osd_uuid)
        osd_id = osd_id.strip()
        (d / f"osd{osd_id}").mkdir()  # memstore keeps its fsid and superblock files here
        self._run("ceph-osd", "-c", c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._osd_args = ("ceph-osd", "-c", c, "-i", osd_id)
        self._osd = self._daemon(*self._osd_args)
        self._daemon("radosgw", "-c", c, "-n", "client.rgw.a")
        self._wait_http(timeout)
        self._run(
            "radosgw-admin", "-c", c, "user", "create", "--uid=cairn", "--display-name=cairn",
            f"--access-key={_ACCESS_KEY}", f"--secret={_SECRET_KEY}",
        )  # fmt: skip

    def _wait_http(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        http = urllib3.PoolManager(retries=False, timeout=2.0)
        osd_restarts = 0
        while True:
            for i, p in enumerate(self.procs):
                if p.poll() is None:
                    continue
                if p is self._osd and osd_restarts < 3:
                    # Ceph's own race: a booting OSD may send its first command before
                    # its monitor client has the monmap, with a zero fsid, and exit on the
                    # refusal ("wrong fsid"; seen 3 times in a row on a loaded machine).
                    # Its data is made; starting the daemon again is all it takes.
                    osd_restarts += 1
                    self.procs.pop(i)
                    self._osd = self._daemon(*self._osd_args)
                    break
                raise RuntimeError(f"{p.args!r} exited {p.returncode}")
            try:
                http.request("GET", f"http://127.0.0.1:{self.rgw_port}/")
                return
            except urllib3.exceptions.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("radosgw did not answer in time") from None
                time.sleep(0.3)

    def stop(self) -> None:
        # SIGKILL: the cluster is throw-away RAM, and a polite SIGTERM makes the OSD wait
        # for a monitor that may already be gone.
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def logs(self) -> list[Path]:
        return sorted((self.root / "log").iterdir())


@contextmanager
def radosgw_server(memstore_bytes: int = 3 << 30) -> Iterator[S3Server]:
    """Start a throw-away radosgw (or use CAIRN_TEST_S3_URL) for the duration of the block."""
    external = external_server()
    if external is not None:
        yield external
        return
    errors: list[str] = []
    # Rarely the fresh OSD asks the monitor with a zero fsid and exits ("wrong fsid"); a
    # second cluster in a new directory on new ports starts cleanly.
    for _attempt in range(3):
        with tempfile.TemporaryDirectory(prefix="cairn-radosgw-") as tmp:
            cluster = _Cluster(Path(tmp), memstore_bytes)
            try:
                try:
                    cluster.start()
                except Exception as e:
                    errors.append(f"{e}\n" + _log_tails(cluster))
                    continue
                yield S3Server(
                    endpoint=f"http://127.0.0.1:{cluster.rgw_port}",
                    access_key=_ACCESS_KEY,
                    secret_key=_SECRET_KEY,
                    logs=cluster.logs(),
                )
                return
            finally:
                cluster.stop()
    raise RuntimeError("radosgw did not start:\n" + "\n".join(errors))


def _log_tails(cluster: _Cluster) -> str:
    tails = []
    for log in cluster.logs():
        lines = log.read_text(errors="replace").splitlines()[-8:]
        tails.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(tails)


@pytest.fixture(scope="session")
def radosgw_s3() -> Iterator[S3Server]:
    """One radosgw for the whole test session (or the CAIRN_TEST_S3_URL endpoint)."""
    if external_server() is None:
        reason = available()
        if reason is not None:
            pytest.fail(f"radosgw is required for the S3 tests ({reason})")
    with radosgw_server() as srv:
        yield srv


if __name__ == "__main__":
    # A SIGTERM (e.g. from `timeout`) must still run the clean-up that kills the daemons.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    t0 = time.monotonic()
    with radosgw_server() as srv:
        print(f"up in {time.monotonic() - t0:.1f}s: {srv.endpoint}")  # noqa: T201 - a CLI
        for k, v in srv.env().items():
            print(f"export {k}={v}")  # noqa: T201
        with suppress(KeyboardInterrupt):
            signal.pause()
