"""Two corners of the remote backends, through the real CLI: a REST server over HTTPS with a
certificate from a private CA (``-o rest.cacert=``; restic checks what cairn wrote), and
"permission denied" on a repository path, locally and over SFTP: one clear line naming the
path, exit code 1, and a repository that restic still finds intact.

We run as root, so the permission cases drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH with
``setpriv`` (for the local CLI, and for the ``sftp-server`` that ssh starts on the server
side); without that, root writes through any mode bits."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.backend.rclone_server import rclone_path, stop_process
from tests.backend.sshd import HOST_ALIAS, SSHServer, sshd  # noqa: F401 - fixture
from tests.cli.conftest import run_cairn
from tests.conftest import run_restic
from tests.interop.remote_common import make_source, one_error_line, restored
from tests.treecompare import describe

#: Run a command as root without the capabilities that let root ignore file modes.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
#: "fatal error" in README.md's table of exit codes.
EXIT_FATAL = 1

needs_setpriv = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to drop CAP_DAC_OVERRIDE",
)


# --- a private CA and an HTTPS REST server ------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(
    directory: Path, name: str
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate written to ``directory/<name>.pem`` (EC keys: fast)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (an IP SAN, which is what TLS clients match an IP
    address against) signed by the CA; returns the certificate and key files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


_SERVING = re.compile(rb"Serving restic REST API on (https://[^/\s]+)/")


@contextmanager
def https_rest_server(root: Path, cert: Path, key: Path) -> Iterator[str]:
    """``rclone serve restic`` over TLS on 127.0.0.1 (port 0: the bound address is read
    from its log line); yields ``https://127.0.0.1:PORT``, stops the server by PID."""
    args = [rclone_path(), "serve", "restic", "--addr", "127.0.0.1:0"]
    args += ["--cert", str(cert), "--key", str(key), "--cache-objects=false", str(root)]
    env = dict(os.environ, RCLONE_CONFIG=str(root.parent / "rclone-none.conf"))
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    found: list[str] = []
    seen: list[bytes] = []

    def read() -> None:
        for line in stderr:
            seen.append(line)
            if not found and (m := _SERVING.search(line)):
                found.append(m.group(1).decode())
                started.set()
        started.set()  # the server exited

    started = threading.Event()
    # the same thread keeps draining the log so the server never blocks on a full pipe
    threading.Thread(target=read, daemon=True).start()
    try:
        started.wait(20)
        if not found:
            raise RuntimeError("rclone did not start:\n" + b"".join(seen).decode(errors="replace"))
        yield found[0]
    finally:
        stop_process(proc)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(HTTPS origin, the CA that signed its certificate, a CA that did not)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, ca_key, ca_cert = make_ca(pki, "test-ca")
    other_ca, _, _ = make_ca(pki, "other-ca")
    cert, key = make_server_cert(pki, ca_key, ca_cert)
    root = tmp_path / "srv"
    root.mkdir()
    with https_rest_server(root, cert, key) as origin:
        yield origin, ca, other_ca


def test_rest_over_https_with_a_private_ca(tls: tuple[str, Path, Path], tmp_path: Path) -> None:
    origin, ca, _ = tls
    url = f"rest:{origin}/repo"
    env = {"CAIRN_CACHE_DIR": str(tmp_path / "cairn-cache")}
    cairn = ["-r", url, "-o", f"rest.cacert={ca}"]
    src = make_source(tmp_path / "src", big=1 << 20)
    run_cairn(*cairn, "init", env=env)
    run_cairn(*cairn, "backup", str(src), env=env)
    run_cairn(*cairn, "restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert restored(tmp_path / "out", src) == describe(src)

    restic_env = {"RESTIC_CACHE_DIR": str(tmp_path / "restic-cache")}
    out = run_restic(url, "--cacert", str(ca), "check", "--read-data", env=restic_env).stdout
    assert b"no errors were found" in out


@pytest.mark.parametrize("trust", ["system CAs only", "another CA"])
def test_rest_over_https_rejects_an_untrusted_certificate(
    tls: tuple[str, Path, Path], tmp_path: Path, trust: str
) -> None:
    origin, _, other_ca = tls
    options = [] if trust == "system CAs only" else ["-o", f"rest.cacert={other_ca}"]
    env = {"CAIRN_CACHE_DIR": str(tmp_path / "cairn-cache")}
    proc = run_cairn("-r", f"rest:{origin}/repo", *options, "init", env=env, expect=None)
    assert proc.returncode == EXIT_FATAL, proc.stderr
    line = one_error_line(proc.stderr)
    assert "certificate verify failed" in line and origin in line, line
    assert not (tmp_path / "srv" / "repo").exists()  # nothing reached the server


def test_rest_cacert_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    proc = run_cairn(
        "-r", "rest:https://127.0.0.1:1/repo", "-o", f"rest.cacert={missing}", "init", expect=None
    )
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in one_error_line(proc.stderr)


# --- permission denied on a local path ------------------------------------------------------


def _restic_check(repo: Path) -> None:
    out = run_restic(repo, "--no-cache", "check", "--read-data").stdout
    assert b"no errors were found" in out


def _tree(root: Path) -> list[tuple[str, int]]:
    """Every path below ``root`` with its size: what 'nothing was changed' compares."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
    )


@needs_setpriv
@pytest.mark.parametrize("where", ["parent not writable", "empty directory not writable"])
def test_init_where_the_path_is_not_writable(tmp_path: Path, where: str) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    repo = parent / "repo" if where == "parent not writable" else parent
    parent.chmod(0o555)
    proc = run_cairn("init", repo=repo, expect=None, prefix=NO_DAC)
    assert proc.returncode == EXIT_FATAL, proc.stderr
    line = one_error_line(proc.stderr)
    assert str(repo) in line and "Permission denied" in line, line
    assert list(parent.iterdir()) == []


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    """(a repository with one snapshot, a source with new data for the next backup)."""
    src = make_source(tmp_path / "src", big=1 << 20)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    (src / "new.bin").write_bytes(os.urandom(1 << 20))
    return repo, src


@needs_setpriv
@pytest.mark.parametrize("read_only", ["whole repository", "data and index only"])
def test_backup_into_a_read_only_repository(backed_up: tuple[Path, Path], read_only: str) -> None:
    """Whole repository: the lock cannot be written. Data and index only: the lock can,
    the first pack cannot; the lock must still be removed. Either way nothing changes."""
    repo, src = backed_up
    dirs = [d for d in [repo, *repo.rglob("*")] if d.is_dir()]
    if read_only == "data and index only":
        dirs = [d for d in dirs if d.name not in (repo.name, "locks", "keys")]
    for d in dirs:
        d.chmod(0o555)
    before = _tree(repo)
    try:
        proc = run_cairn("backup", str(src), repo=repo, expect=None, prefix=NO_DAC)
        assert proc.returncode == EXIT_FATAL, proc.stderr
        line = one_error_line(proc.stderr)
        assert str(repo) in line and "Permission denied" in line, line
        assert _tree(repo) == before  # not even a stale lock
    finally:
        for d in dirs:
            d.chmod(0o755)
    _restic_check(repo)
    assert len(run_cairn("--json", "snapshots", repo=repo).stdout.split(b'"id"')) == 2


# --- permission denied over SFTP -------------------------------------------------------------


def _sftp_without_dac(server: SSHServer) -> str:
    """An ``sftp.command`` whose server side drops the capabilities: ssh runs the stock
    OpenSSH ``sftp-server`` under setpriv instead of the ``internal-sftp`` subsystem, so
    the root login of the test sshd meets file modes like an ordinary user would."""
    inner = " ".join([*NO_DAC, "/usr/lib/openssh/sftp-server"])
    return " ".join(["ssh", "-F", str(server.client_config), HOST_ALIAS, inner])


@needs_setpriv
def test_sftp_init_and_backup_where_the_path_is_not_writable(
    sshd: SSHServer,  # noqa: F811
    backed_up: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    if not os.access("/usr/lib/openssh/sftp-server", os.X_OK):
        pytest.skip("no /usr/lib/openssh/sftp-server")
    command = f"sftp.command={_sftp_without_dac(sshd)}"
    env = {"CAIRN_CACHE_DIR": str(tmp_path / "cairn-cache")}

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    target = parent / "repo"
    proc = run_cairn(
        "-r", f"sftp:{HOST_ALIAS}:{target}", "-o", command, "init", env=env, expect=None
    )
    assert proc.returncode == EXIT_FATAL, proc.stderr
    line = one_error_line(proc.stderr)
    assert str(target) in line and "ermission denied" in line, line
    assert list(parent.iterdir()) == []

    repo, src = backed_up
    dirs = [d for d in [repo, *repo.rglob("*")] if d.is_dir()]
    for d in dirs:
        d.chmod(0o555)
    before = _tree(repo)
    try:
        proc = run_cairn(
            "-r",
            f"sftp:{HOST_ALIAS}:{repo}",
            "-o",
            command,
            "backup",
            str(src),
            env=env,
            expect=None,
        )
        assert proc.returncode == EXIT_FATAL, proc.stderr
        line = one_error_line(proc.stderr)
        assert str(repo) in line and "ermission denied" in line, line
        assert _tree(repo) == before
    finally:
        for d in dirs:
            d.chmod(0o755)
    _restic_check(repo)
