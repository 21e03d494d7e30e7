"""Global options shared by every command: repository location, password, output mode.

Environment variables follow restic's names, with ``CAIRN_`` equivalents taking
precedence: ``CAIRN_REPOSITORY``/``RESTIC_REPOSITORY``, ``..._REPOSITORY_FILE``,
``..._PASSWORD``, ``..._PASSWORD_FILE``, ``..._PASSWORD_COMMAND``, ``..._CACHE_DIR``.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cairn.backend.base import Backend
from cairn.backend.location import open_backend
from cairn.errors import PasswordError, UsageError
from cairn.repo.cache import Cache, CacheUnavailable, default_root
from cairn.repo.repository import Repository


def env(name: str) -> str | None:
    """``CAIRN_<name>`` if set, else ``RESTIC_<name>``."""
    value = os.environ.get(f"CAIRN_{name}")
    if value is None:
        value = os.environ.get(f"RESTIC_{name}")
    return value


@dataclass
class GlobalOptions:
    repo: str | None = None
    repository_file: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    key_hint: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    no_lock: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    #: Target pack size in MiB (restic 0.15's --pack-size); None: the environment or 16.
    pack_size: int | None = None
    options: dict[str, str] = field(default_factory=dict)

    # -- repository location --------------------------------------------------

    def repository_url(self) -> str:
        if self.repo:
            return self.repo
        rfile = self.repository_file or env("REPOSITORY_FILE")
        if rfile:
            try:
                with open(rfile, encoding="utf-8") as f:
                    url = f.read().strip()
            except OSError as e:
                raise UsageError(f"cannot read repository file {rfile}: {e.strerror}") from e
            if url:
                return url
        from_env = env("REPOSITORY")
        if from_env:
            return from_env
        raise UsageError(
            "no repository given: use -r/--repo, or set CAIRN_REPOSITORY or RESTIC_REPOSITORY"
        )

    def backend(self) -> Backend:
        return open_backend(self.repository_url(), self.options, log=self._retry_log)

    def _retry_log(self, message: str) -> None:
        """One short line per retried request, so a flaky link is visible but not noisy."""
        if not self.quiet:
            sys.stderr.write(f"cairn: {message}\n")
            sys.stderr.flush()

    # -- password -----------------------------------------------------------

    def password(self, *, prompt: str = "enter password for repository: ") -> str:
        """restic's order: --password-command, --password-file, the PASSWORD variable, then
        the terminal (or the first line of standard input when it is not a terminal)."""
        command = self.password_command or env("PASSWORD_COMMAND")
        pfile = self.password_file or env("PASSWORD_FILE")
        if command and pfile:
            raise UsageError("give either a password file or a password command, not both")
        if command:
            return _from_command(command)
        if pfile:
            return _from_file(pfile)
        value = env("PASSWORD")
        if value:
            return value
        return _ask(prompt)

    def new_password(self) -> str:
        """For ``init`` and ``key add``: like password(), but asks twice on a terminal."""
        command = self.password_command or env("PASSWORD_COMMAND")
        pfile = self.password_file or env("PASSWORD_FILE")
        if command or pfile or env("PASSWORD"):
            return self.password()
        return ask_new_password()

    def open_repository(self, *, cache: bool = True) -> Repository:
        """Open the repository with the password, through the local cache unless
        ``--no-cache`` or ``cache=False`` (``check`` must read the repository itself)."""
        backend = self.backend()
        repo = Repository.open(backend, self.password(), key_hint=self.key_hint)
        repo.pack_size = self.pack_size_mib() << 20
        if cache and not self.no_cache:
            try:
                repo.use_cache(Cache.open(self.cache_root(), repo.config.id))
            except CacheUnavailable as e:
                # Only speed is lost without it, so say why and carry on (as restic does).
                if not self.quiet:
                    sys.stderr.write(f"cairn: warning: {e}; continuing without a cache\n")
        return repo

    def pack_size_mib(self) -> int:
        """--pack-size, else $CAIRN_PACK_SIZE / $RESTIC_PACK_SIZE, else 16 (MiB)."""
        if self.pack_size is not None:
            return self.pack_size
        raw = env("PACK_SIZE")
        if not raw:
            return 16
        try:
            mib = int(raw)
        except ValueError:
            raise UsageError(f"PACK_SIZE must be a whole number of MiB, not {raw!r}") from None
        if not 4 <= mib <= 128:
            raise UsageError(f"PACK_SIZE must be between 4 and 128 MiB, not {mib}")
        return mib

    def cache_root(self) -> Path:
        """--cache-dir, else CAIRN_CACHE_DIR/RESTIC_CACHE_DIR, else the XDG default."""
        root = self.cache_dir or env("CACHE_DIR")
        return Path(root) if root else default_root(os.environ)


def ask_new_password(prompt: str = "enter new password: ") -> str:
    """Ask for a new password; twice on a terminal, so that a typo does not lock you out."""
    first = _ask(prompt)
    on_terminal = sys.stdin is not None and sys.stdin.isatty()
    if on_terminal and _ask("enter password again: ") != first:
        raise PasswordError("passwords do not match")
    return first


def read_password_file(path: str) -> str:
    """A password from a file, surrounding white space trimmed (restic's rule)."""
    return _from_file(path)


def _from_command(command: str) -> str:
    try:
        proc = subprocess.run(shlex.split(command), capture_output=True, timeout=120)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise PasswordError(f"password command {command!r} failed: {e}") from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise PasswordError(
            f"password command exited with {proc.returncode}" + (f": {err[-1]}" if err else "")
        )
    value = proc.stdout.decode(errors="surrogateescape").strip()
    if not value:
        raise PasswordError("the password command printed an empty password")
    return value


def _from_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            value = f.read().strip()
    except OSError as e:
        raise PasswordError(f"cannot read password file {path}: {e.strerror}") from e
    if not value:
        raise PasswordError(f"the password file {path} is empty")
    return value


def _ask(prompt: str) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            value = getpass.getpass(prompt)
        except EOFError:
            value = ""
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        value = line.rstrip("\r\n")
    if not value:
        raise PasswordError(
            "no password: set CAIRN_PASSWORD/RESTIC_PASSWORD, use --password-file or "
            "--password-command, or run on a terminal"
        )
    return value
