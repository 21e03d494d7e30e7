"""A repository on an SFTP server, reached through the system's ``ssh`` like restic does.

For every connection we spawn ``ssh [host] [-p port] [-l user] [sftp.args] -s sftp`` (or the
user's ``sftp.command``) and speak SFTP over its stdin/stdout with paramiko's
``SFTPClient``. The user's ~/.ssh/config, agent, known_hosts and ProxyJump therefore apply,
and the encryption runs in the ssh process, outside the GIL (research: dependencies.md §5).

paramiko's SFTPClient matches requests to responses without per-thread routing, so one
client serves one request at a time; parallel transfers use a pool of up to
``sftp.connections`` ssh processes (restic's option name and default, 5), each used by one
thread at a time. Within a request, reads and writes are pipelined (many 32 KiB requests in
flight), which is what makes one connection fast.

Layout and habits are restic's (spec §2.1, §16.2): packs sharded in ``data/xx/``; a save
writes ``<final>-restic-temp-<32 hex>`` opened create+exclusive, chmods it while empty,
writes, closes and renames it onto the final name, creating missing directories on the
first failure.

Without a terminal, ssh cannot ask for a password or a host key confirmation, so it gets
``BatchMode=yes`` and the connection setup is bounded in time; with a terminal, ssh may
prompt on it as it does for restic. ``ConnectTimeout`` and ``ServerAlive*`` options bound
the time to notice an unreachable or vanished server (``sftp.args`` can override them).
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import stat as stat_mod
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import paramiko

from cairn.backend.base import DIR_TYPES, Backend, FileInfo, FileType, Handle, is_id_name
from cairn.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BackendError,
    BackendLocationError,
    NotFoundError,
    TransientBackendError,
)

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: restic's default for ``-o sftp.connections``.
DEFAULT_CONNECTIONS = 5
#: Seconds allowed for ssh to connect and the SFTP handshake when no one can answer a prompt.
SETUP_TIMEOUT = 60.0
#: Size of one SFTP read/write request (what OpenSSH's sftp-server handles in one go).
CHUNK = 32768
#: ssh options we add (after sftp.args, so the user's own -o settings win: ssh keeps the
#: first value it sees for an option).
SSH_DEFAULT_OPTIONS = (
    "-o",
    "ConnectTimeout=30",
    "-o",
    "ServerAliveInterval=15",
    "-o",
    "ServerAliveCountMax=4",
)
#: Pipe buffer size requested for the ssh pipes.
PIPE_SIZE = 1 << 20
#: Bytes read from ssh's stdout at once.
READ_SIZE = 1 << 18
OPTIONS = ("sftp.command", "sftp.args", "sftp.connections")

# Lines of ssh's stderr that mean "your credentials or the host's identity were refused".
_AUTH_PATTERNS = re.compile(
    r"Permission denied|Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"
    r"|Too many authentication failures|host key .* (?:is not known|has changed)"
    r"|No \S+ host key is known",
    re.IGNORECASE,
)


# --- location ---------------------------------------------------------------------


@dataclass(frozen=True)
class SFTPConfig:
    """Where the repository is, parsed from the URL, plus the ``-o sftp.*`` options."""

    host: str
    path: str
    user: str = ""
    port: str = ""
    command: str = ""
    args: str = ""
    connections: int = DEFAULT_CONNECTIONS

    def display(self) -> str:
        """The location without secrets, as the user would recognise it."""
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"sftp:{who}{self.host}{port}:{self.path}"


def _clean(path: str) -> str:
    """Go's path.Clean (restic cleans the directory): like normpath, but "//x" -> "/x"."""
    p = posixpath.normpath(path) if path else "."
    if p.startswith("//"):
        p = "/" + p.lstrip("/")
    return p


def parse_location(rest: str) -> SFTPConfig:
    """Parse what follows ``sftp:`` in a repository URL, with restic's rules.

    ``sftp:[user@]host:path`` (the path may be relative to the login directory; the user
    is everything before the *last* "@", the host ends at the first ":") and
    ``sftp://[user@]host[:port]/path`` (one slash after the host means relative,
    ``//abs`` an absolute path; IPv6 hosts in brackets).
    """
    if rest.startswith("//"):
        try:
            parts = urllib.parse.urlsplit("sftp:" + rest)
        except ValueError as e:  # e.g. an unclosed IPv6 bracket
            raise BackendLocationError(f"sftp: malformed URL {'sftp:' + rest!r}: {e}") from e
        netloc = parts.netloc
        user, _, hostport = netloc.rpartition("@")
        user = urllib.parse.unquote(user.partition(":")[0])
        if hostport.startswith("["):
            host, bracket, after = hostport[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise BackendLocationError(f"sftp: malformed host in {'sftp:' + rest!r}")
            port = after[1:]
        else:
            host, _, port = hostport.partition(":")
        if port and not port.isdigit():
            raise BackendLocationError(f"sftp: invalid port {port!r} in {'sftp:' + rest!r}")
        if not parts.path:
            raise BackendLocationError(f"sftp: no directory specified in {'sftp:' + rest!r}")
        path = urllib.parse.unquote(parts.path)[1:]
    else:
        userhost, colon, path = rest.partition(":")
        if not colon:
            raise BackendLocationError(
                f"sftp: invalid format {'sftp:' + rest!r}, hostname or path not found "
                "(expected sftp:[user@]host:/path or sftp://[user@]host[:port]//path)"
            )
        user, _, host = userhost.rpartition("@")
        port = ""
    if not host:
        raise BackendLocationError(f"sftp: no host in {'sftp:' + rest!r}")
    if host.startswith("-"):
        # ssh would take it for an option
        raise BackendLocationError(f"sftp: invalid host {host!r}")
    path = _clean(path)
    if path.startswith("~"):
        raise BackendLocationError(
            "sftp path starts with the tilde (~) character, which fails on most sftp servers; "
            "use a relative path, most servers take it as relative to the home directory"
        )
    return SFTPConfig(host=host, path=path, user=user, port=port)


def with_options(cfg: SFTPConfig, options: dict[str, str]) -> SFTPConfig:
    """Apply the ``sftp.*`` options; other backends' options are ignored."""
    unknown = [k for k in options if k.startswith("sftp.") and k not in OPTIONS]
    if unknown:
        raise BackendLocationError(
            f"unknown option {unknown[0]!r} (sftp options: {', '.join(OPTIONS)})"
        )
    command = options.get("sftp.command", "")
    args = options.get("sftp.args", "")
    if command and args:
        raise BackendLocationError("cannot specify both sftp.command and sftp.args options")
    raw = options.get("sftp.connections", str(DEFAULT_CONNECTIONS))
    try:
        connections = int(raw)
    except ValueError:
        connections = 0
    if connections < 1:
        raise BackendLocationError(f"sftp.connections must be a positive number, not {raw!r}")
    return SFTPConfig(
        host=cfg.host,
        path=cfg.path,
        user=cfg.user,
        port=cfg.port,
        command=command,
        args=args,
        connections=connections,
    )


def build_command(cfg: SFTPConfig, *, interactive: bool) -> list[str]:
    """The argv that starts an SFTP session (restic's order: host, -p, -l, args, -s sftp)."""
    if cfg.command:
        argv = shlex.split(cfg.command)
        if not argv:
            raise BackendLocationError("sftp.command is empty")
        return argv
    argv = ["ssh", cfg.host]
    if cfg.port:
        argv += ["-p", cfg.port]
    if cfg.user:
        argv += ["-l", cfg.user]
    if cfg.args:
        argv += shlex.split(cfg.args)
    argv += SSH_DEFAULT_OPTIONS
    if not interactive:
        argv += ["-o", "BatchMode=yes"]
    return [*argv, "-s", "sftp"]


def have_terminal() -> bool:
    """True when ssh could prompt the user (we have a controlling terminal)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


# --- one ssh process speaking SFTP ---------------------------------------------------------


class _PipeChannel:
    """The socket-like object paramiko's SFTPClient needs, over a child's stdin/stdout.

    After the peer goes away, ``send`` swallows data (so paramiko's prefetch thread does not
    die with a traceback) and ``recv`` returns b"" — paramiko turns that into EOFError /
    "Server connection dropped", which the backend reports as a transient failure.
    """

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._in = proc.stdin.fileno()
        self._out = proc.stdout.fileno()
        for fd in (self._in, self._out):
            # Larger pipes mean fewer context switches between us and ssh (Linux only;
            # the default 64 KiB holds just two 32 KiB requests).
            with suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._name = name
        self._timeout: float | None = None
        self._buf = b""
        self._pos = 0
        self.broken = False

    def send(self, data: bytes | memoryview) -> int:
        if self.broken:
            return len(data)
        try:
            return os.write(self._in, data)
        except OSError:
            self.broken = True
            return len(data)

    def recv(self, n: int) -> bytes:
        # paramiko asks for a 4-byte length, then the body; reading the pipe in large
        # gulps and serving those small asks from a buffer saves most system calls.
        if self._pos >= len(self._buf):
            if self.broken:
                return b""
            if self._timeout is not None:
                ready, _, _ = select.select([self._out], [], [], self._timeout)
                if not ready:
                    raise TimeoutError(f"no answer within {self._timeout:.0f}s")
            try:
                self._buf = os.read(self._out, max(n, READ_SIZE))
            except OSError:
                self._buf = b""
            self._pos = 0
            if not self._buf:
                self.broken = True
                return b""
        if self._pos == 0 and n >= len(self._buf):
            self._pos = len(self._buf)
            return self._buf
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def recv_ready(self) -> bool:
        if self._pos < len(self._buf):
            return True
        ready, _, _ = select.select([self._out], [], [], 0)
        return bool(ready)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, blocking: bool) -> None:
        self._timeout = None if blocking else 0.0

    def get_name(self) -> str:
        return self._name

    def close(self) -> None:
        self.broken = True


class _Connection:
    """One ssh process and the SFTP client speaking over its pipes."""

    def __init__(self, argv: list[str], where: str, interactive: bool) -> None:
        self.where = where
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                # Without a terminal, keep ssh out of our process group so Ctrl-C reaches
                # only us (and we can still remove our lock); with one, ssh must share the
                # foreground group to prompt on it.
                start_new_session=not interactive,
            )
        except OSError as e:
            raise BackendError(f"cannot start {argv[0]!r} for {where}: {e.strerror}") from e
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"ssh-stderr {where}", daemon=True
        )
        self._stderr_thread.start()
        self.channel = _PipeChannel(self.proc, where)
        self.channel.settimeout(None if interactive else SETUP_TIMEOUT)
        try:
            self.sftp = paramiko.SFTPClient(self.channel)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._setup_error(e) from e
        finally:
            self.channel.settimeout(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                _log.debug("ssh %s: %s", self.where, line)

    def _setup_error(self, e: BaseException) -> BackendError:
        """ssh failed to set up the session: say why, in ssh's own words."""
        if isinstance(e, TimeoutError):
            self.close()
            return BackendError(
                f"{self.where}: no SFTP session within {SETUP_TIMEOUT:.0f}s "
                "(ssh may be waiting for a password; use a key or an agent)"
            )
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.close()
        self._stderr_thread.join(timeout=2)
        lines = list(self._stderr)
        auth = [ln for ln in lines if _AUTH_PATTERNS.search(ln)]
        if auth:
            return AuthenticationError(f"{self.where}: {auth[-1]}")
        if lines:
            return BackendError(f"{self.where}: {lines[-1]}")
        status = self.proc.returncode
        return BackendError(
            f"{self.where}: ssh exited (status {status}) before an SFTP session started"
            if status is not None
            else f"{self.where}: SFTP handshake failed: {e}"
        )

    @property
    def alive(self) -> bool:
        return not self.channel.broken and self.proc.poll() is None

    def close(self) -> None:
        self.channel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2)  # ssh leaves on EOF of its stdin
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the backend ---------------------------------------------------------------


class _ConnectionLost(Exception):
    """Internal: the ssh process or its pipes failed during a request."""


class SFTPBackend(Backend):
    """Files under one directory on an SFTP server; see the module docstring."""

    def __init__(self, cfg: SFTPConfig, *, interactive: bool | None = None) -> None:
        self.cfg = cfg
        self.location = cfg.display()
        self.connections = cfg.connections
        self.root = cfg.path
        self._interactive = have_terminal() if interactive is None else interactive
        self._argv = build_command(cfg, interactive=self._interactive)
        who = f"{cfg.user}@" if cfg.user else ""
        self._where = f"sftp {who}{cfg.host}" + (f":{cfg.port}" if cfg.port else "")
        self._idle: list[_Connection] = []
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False
        self._posix_rename = True  # until the server says it does not know the extension
        # Connect once now, so a bad host, key or path fails at open with a clear message.
        self._release(self._connect())

    # -- connection pool --

    def _connect(self) -> _Connection:
        with self._cond:
            self._open += 1
        try:
            return _Connection(self._argv, self._where, self._interactive)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _acquire(self) -> _Connection:
        with self._cond:
            while True:
                if self._closed:
                    raise BackendError(f"{self.location}: the backend is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.connections:
                    break
                self._cond.wait()
        return self._connect()

    def _release(self, conn: _Connection) -> None:
        with self._cond:
            if conn.alive and not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
            self._open -= 1
            self._cond.notify()
        conn.close()

    @contextmanager
    def _session(self) -> Iterator[paramiko.SFTPClient]:
        conn = self._acquire()
        try:
            yield conn.sftp
        except (paramiko.SSHException, EOFError, TimeoutError) as e:
            conn.channel.broken = True
            raise _ConnectionLost(str(e) or type(e).__name__) from e
        except OSError as e:
            # paramiko reports SFTP status codes as OSError too; tell them apart by
            # whether the pipes still work.
            if not conn.alive:
                raise _ConnectionLost(str(e) or type(e).__name__) from e
            raise
        finally:
            self._release(conn)

    def _run(self, what: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run ``fn`` on a pooled session; turn failures into cairn errors."""
        try:
            with self._session() as sftp:
                return fn(sftp)
        except _ConnectionLost as e:
            raise TransientBackendError(
                f"{self.location}: connection lost during {what}: {e}"
            ) from e

    # -- paths --

    def _path(self, handle: Handle) -> str:
        return posixpath.join(self.root, handle.relpath())

    def _error(self, e: OSError, what: str) -> BackendError:
        if e.errno == errno.ENOENT:
            return NotFoundError(f"{what} does not exist in {self.location}")
        if e.errno == errno.EACCES:
            return BackendError(f"cannot {what} in {self.location}: permission denied")
        return BackendError(f"cannot {what} in {self.location}: {e.strerror or e}")

    @staticmethod
    def _mkdir_p(sftp: paramiko.SFTPClient, path: str, mode: int = 0o700) -> None:
        """Create ``path`` and missing parents; existing directories are fine."""
        missing = []
        p = path
        while p not in ("", "/", "."):
            try:
                if stat_mod.S_ISDIR(sftp.stat(p).st_mode or 0):
                    break
                raise BackendError(f"{p} exists and is not a directory")
            except FileNotFoundError:
                missing.append(p)
                p = posixpath.dirname(p)
        for d in reversed(missing):
            SFTPBackend._mkdir_exist_ok(sftp, d, mode)

    @staticmethod
    def _mkdir_exist_ok(sftp: paramiko.SFTPClient, path: str, mode: int = 0o700) -> None:
        """``mkdir`` that accepts a directory a concurrent writer created meanwhile, and
        otherwise reports why mkdir failed (permission denied), not why the check did."""
        try:
            sftp.mkdir(path, mode)
        except OSError as e:
            try:
                is_dir = stat_mod.S_ISDIR(sftp.stat(path).st_mode or 0)
            except OSError:
                is_dir = False
            if not is_dir:
                raise e from None

    # -- Backend --

    def create(self) -> None:
        config = posixpath.join(self.root, "config")

        def prepare(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.stat(config)
            except FileNotFoundError:
                pass
            else:
                raise AlreadyExistsError(f"{self.location}: a repository already exists here")
            self._mkdir_p(sftp, self.root)
            for t in DIR_TYPES:
                self._mkdir_p(sftp, posixpath.join(self.root, t.value))

        try:
            self._run("create", prepare)
        except OSError as e:
            raise BackendError(
                f"cannot create repository at {self.location}: {e.strerror or e}"
            ) from e
        data = posixpath.join(self.root, "data")
        shards = [posixpath.join(data, f"{i:02x}") for i in range(256)]

        def make_shards(part: list[str]) -> None:
            def mk(sftp: paramiko.SFTPClient) -> None:
                for d in part:
                    self._mkdir_exist_ok(sftp, d)

            self._run("create", mk)

        # 256 round trips: spread them over the connections (this matters on a WAN).
        n = self.connections
        try:
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(make_shards, [shards[i::n] for i in range(n)]))
        except OSError as e:
            raise BackendError(
                f"cannot create repository at {self.location}: {e.strerror or e}"
            ) from e

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        final = self._path(handle)
        tmp = f"{final}-restic-temp-{secrets.token_hex(16)}"
        view = memoryview(data).cast("B")

        def upload(sftp: paramiko.SFTPClient) -> None:
            if handle.type is not FileType.CONFIG:
                try:
                    sftp.stat(final)
                except FileNotFoundError:
                    pass
                else:
                    raise AlreadyExistsError(f"{handle} already exists in {self.location}")
            try:
                f = sftp.open(tmp, "wxb")
            except FileNotFoundError:
                self._mkdir_p(sftp, posixpath.dirname(final))
                f = sftp.open(tmp, "wxb")
            try:
                with f:
                    f.chmod(0o600)  # while empty, before any content is there
                    f.set_pipelined(True)
                    for start in range(0, len(view), CHUNK):
                        f.write(view[start : start + CHUNK])
                self._rename(sftp, tmp, final, replace=handle.type is FileType.CONFIG)
            except BaseException:
                # the connection may be gone; the temporary name is never listed anyway
                with suppress(Exception):
                    sftp.remove(tmp)
                raise

        try:
            self._run(f"save {handle}", upload)
        except OSError as e:
            raise self._error(e, f"save {handle}") from e

    def _rename(self, sftp: paramiko.SFTPClient, tmp: str, final: str, *, replace: bool) -> None:
        if self._posix_rename:
            try:
                sftp.posix_rename(tmp, final)
                return
            except OSError as e:
                if "unsupported" not in str(e).lower():
                    raise
                self._posix_rename = False
        if replace:
            with suppress(FileNotFoundError):
                sftp.remove(final)
        sftp.rename(tmp, final)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        path = self._path(handle)

        def download(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as f:
                size = f.stat().st_size or 0
                end = size if length is None else offset + length
                if end > size or offset > size:
                    raise BackendError(
                        f"{handle}: range {offset}+{end - offset} is beyond its end ({size} bytes)"
                    )
                if end == offset:
                    return b""
                chunks = [(o, min(CHUNK, end - o)) for o in range(offset, end, CHUNK)]
                if len(chunks) == 1:
                    f.seek(offset)
                    data: bytes = f.read(end - offset)
                else:
                    # readv pipelines the requests; each piece comes back as one read, and
                    # joining once keeps it linear (one large read() would not be).
                    data = b"".join(f.readv(chunks))
            if len(data) != end - offset:
                raise BackendError(f"{handle}: short read ({len(data)} of {end - offset} bytes)")
            return data

        try:
            return self._run(f"load {handle}", download)
        except OSError as e:
            raise self._error(e, f"load {handle}") from e

    def stat(self, handle: Handle) -> int:
        path = self._path(handle)
        try:
            return self._run(f"stat {handle}", lambda s: s.stat(path).st_size or 0)
        except OSError as e:
            raise self._error(e, f"stat {handle}") from e

    def _listdir(self, path: str) -> list[Any]:
        try:
            return self._run(f"list {path}", lambda s: s.listdir_attr(path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error(e, f"list {path}") from e

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            raise ValueError("config is not listed")
        base = posixpath.join(self.root, file_type.value)
        dirs = [base]
        if file_type is FileType.PACK:
            dirs = [
                posixpath.join(base, a.filename)
                for a in self._listdir(base)
                if stat_mod.S_ISDIR(a.st_mode or 0)
            ]
        for d in dirs:
            # fetch one directory at a time, holding no connection while the caller works
            for a in self._listdir(d):
                if is_id_name(a.filename) and stat_mod.S_ISREG(a.st_mode or 0):
                    yield FileInfo(a.filename, a.st_size or 0)

    def remove(self, handle: Handle) -> None:
        path = self._path(handle)
        try:
            self._run(f"remove {handle}", lambda s: s.remove(path))
        except OSError as e:
            raise self._error(e, f"remove {handle}") from e

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()


def from_location(rest: str, options: dict[str, str]) -> Backend:
    """Open ``sftp:<rest>`` (see :func:`parse_location`) with the ``-o sftp.*`` options."""
    cfg = with_options(parse_location(rest), options)
    return SFTPBackend(cfg)
