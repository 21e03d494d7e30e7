"""``rclone:remote:path`` — any storage rclone reaches, the way restic does it.

cairn starts ``rclone serve restic --stdio --b2-hard-delete <remote:path>`` as a child and
speaks restic's REST protocol with it as HTTP/2 over the child's stdin/stdout
(:mod:`cairn.backend._h2pipe`); the protocol logic is :class:`~cairn.backend.rest.RestBackend`'s.
Options (restic's names): ``rclone.program`` (default ``rclone``), ``rclone.args``
(default ``serve restic --stdio --b2-hard-delete``), ``rclone.connections`` (default 5).

The child runs in its own session, so a Ctrl-C in the terminal reaches cairn (which then
closes the backend) rather than killing rclone in the middle of an upload. Its error
output is logged and the last lines explain a failure when the child exits.
"""

from __future__ import annotations

import collections
import logging
import shlex
import shutil
import subprocess
import threading
from typing import IO

from cairn.backend._h2pipe import H2PipeTransport
from cairn.backend.rest import RestBackend, check_options, connections_option
from cairn.errors import BackendError, BackendLocationError, UsageError

_log = logging.getLogger(__name__)

DEFAULT_ARGS = "serve restic --stdio --b2-hard-delete"
_OPTIONS = {"program", "args", "connections"}


class RcloneBackend(RestBackend):
    """A RestBackend whose server is an rclone child process on the other end of two pipes."""

    def __init__(self, command: list[str], location: str, connections: int) -> None:
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as e:
            raise BackendError(f"{location}: cannot start {command[0]!r}: {e.strerror}") from e
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=10)
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, args=(self._proc.stderr,), name="rclone-stderr", daemon=True
        )
        self._stderr_thread.start()
        self._h2 = H2PipeTransport(
            self._proc.stdout.fileno(),
            self._proc.stdin.fileno(),
            connections=connections,
            describe_exit=self._describe_exit,
        )
        super().__init__(self._h2, "", location)
        self._closed = False

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            _log.info("rclone: %s", line)

    def _describe_exit(self) -> str:
        """Why the pipe closed: the child's exit status and its last words."""
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr_thread.join(1)
        status = "closed its pipes" if code is None else f"exited with status {code}"
        tail = "; ".join(line for line in self._stderr_tail if line)
        return f"{self.location}: rclone {status}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport.close()
        # Closing stdin is rclone's signal to finish; a stubborn child is killed. stdout is
        # closed only after the child is gone, when the reader thread has seen EOF.
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._h2.join(5)
        self._proc.stdout.close()
        self._stderr_thread.join(1)
        self._proc.stderr.close()


def from_location(rest: str, options: dict[str, str]) -> RcloneBackend:
    """Build the backend for ``rclone:<rest>`` (an rclone remote and path, or a local path)."""
    check_options(options, "rclone", _OPTIONS)
    if not rest:
        raise BackendLocationError("rclone: needs a remote, e.g. rclone:myremote:backups/host1")
    program = options.get("rclone.program", "rclone")
    try:
        args = shlex.split(options.get("rclone.args", DEFAULT_ARGS))
    except ValueError as e:
        raise UsageError(f"-o rclone.args: {e}") from None
    command = [*shlex.split(program), *args, rest]
    if shutil.which(command[0]) is None:
        raise BackendError(f"rclone:{rest}: the program {command[0]!r} was not found in PATH")
    return RcloneBackend(
        command, f"rclone:{rest}", connections_option(options, "rclone.connections")
    )
