"""``rclone serve restic`` on 127.0.0.1 for the tests: a real REST protocol server.

The server is asked for port 0 and the address it really bound is read from its log line
("Serving restic REST API on http://127.0.0.1:PORT/"), so there is no race for a port.
It is stopped by PID when the block ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SERVING = re.compile(rb"Serving restic REST API on (http://[^/\s]+)/")


@dataclass(frozen=True)
class RestServer:
    """A running server: its URL (no trailing slash) and the directory it serves."""

    url: str
    root: Path
    user: str | None = None
    password: str | None = None

    def repo_url(self, path: str = "repo", *, credentials: bool = True) -> str:
        """A ``rest:`` URL for ``path`` below the server root (with the credentials)."""
        base = self.url
        if credentials and self.user:
            base = base.replace("http://", f"http://{self.user}:{self.password}@", 1)
        return f"rest:{base}/{path}/"


def rclone_path() -> str:
    path = shutil.which("rclone")
    if path is None:
        raise RuntimeError("rclone is required for the REST tests (apt-get install rclone)")
    return path


@contextmanager
def rclone_rest_server(
    root: Path,
    *,
    append_only: bool = False,
    user: str | None = None,
    password: str | None = None,
    cache_objects: bool = False,
    timeout: float = 20.0,
) -> Iterator[RestServer]:
    """Serve ``root`` with ``rclone serve restic`` for the duration of the block.

    rclone's object cache (on by default) keeps answering HEAD for a file whose upload
    failed and that rclone deleted; ``cache_objects=False`` turns it off so that tests
    observe the files on disk."""
    args = [rclone_path(), "serve", "restic", "--addr", "127.0.0.1:0", str(root)]
    if append_only:
        args.append("--append-only")
    if not cache_objects:
        args.append("--cache-objects=false")
    if user is not None:
        args += ["--user", user, "--pass", password or ""]
    env = dict(os.environ, RCLONE_CONFIG=str(root.parent / "rclone-none.conf"))
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stderr is not None
        url = _wait_for_address(proc, timeout)
        # keep draining the log so the server never blocks on a full pipe
        threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
        yield RestServer(url, root, user, password)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Ask a server to stop (SIGTERM), and kill it if it has not within 10 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_address(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stderr is not None
    found: list[str] = []
    seen: list[bytes] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            m = _SERVING.search(line)
            if m:
                found.append(m.group(1).decode())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise RuntimeError(
            "rclone serve restic did not start:\n" + b"".join(seen).decode(errors="replace")
        )
    return found[0]


def _drain(stream: object) -> None:
    for _ in stream:  # type: ignore[attr-defined]
        pass
