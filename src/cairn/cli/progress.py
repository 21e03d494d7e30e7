"""Progress while a command runs: one refreshed line on a terminal, or restic-style JSON
``status`` lines with ``--json``. A ticker thread samples plain counters once a second, so
the work itself pays nothing per file or byte beyond an integer addition."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cairn.cli.output import human_duration, human_size, print_json
from cairn.threadname import name_this_thread


@dataclass
class Snapshot:
    """One sample of a running operation's counters."""

    files_done: int
    bytes_done: int
    files_total: int | None = None  # None while still counting
    bytes_total: int | None = None
    current: str = ""
    phase: str = ""


Sampler = Callable[[], Snapshot]


def status_line(s: Snapshot, elapsed: float) -> str:
    rate = s.bytes_done / elapsed if elapsed > 0 else 0.0
    parts = [f"[{human_duration(elapsed)}]"]
    if s.bytes_total:
        pct = min(100.0, 100.0 * s.bytes_done / s.bytes_total)
        parts.append(f"{pct:5.1f}%")
    files = f"{s.files_done}" + (f"/{s.files_total}" if s.files_total is not None else "")
    size = human_size(s.bytes_done) + (
        f" / {human_size(s.bytes_total)}" if s.bytes_total is not None else ""
    )
    parts.append(f"{files} files {size}, {human_size(rate)}/s")
    if s.bytes_total and rate > 0 and s.bytes_done < s.bytes_total:
        parts.append(f"ETA {human_duration((s.bytes_total - s.bytes_done) / rate)}")
    if s.phase:
        parts.append(s.phase)
    if s.current:
        parts.append(s.current[-40:])
    return " ".join(parts)


def status_json(s: Snapshot, elapsed: float) -> dict[str, object]:
    """Field names as in restic's ``--json`` status messages."""
    doc: dict[str, object] = {
        "message_type": "status",
        "seconds_elapsed": int(elapsed),
        "files_done": s.files_done,
        "bytes_done": s.bytes_done,
    }
    if s.bytes_total is not None:
        doc["total_files"] = s.files_total
        doc["total_bytes"] = s.bytes_total
        doc["percent_done"] = (s.bytes_done / s.bytes_total) if s.bytes_total else 1.0
        rate = s.bytes_done / elapsed if elapsed > 0 else 0.0
        if rate > 0 and s.bytes_done < s.bytes_total:
            doc["seconds_remaining"] = int((s.bytes_total - s.bytes_done) / rate)
    if s.current:
        doc["current_files"] = [s.current]
    return doc


class Ticker:
    """Samples ``sampler`` every ``interval`` seconds in a daemon thread and shows it."""

    def __init__(self, sampler: Sampler, *, mode: str | None, interval: float = 1.0) -> None:
        self.sampler = sampler
        self.mode = mode  # "tty", "json" or None (off)
        self.interval = interval
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cairn-progress", daemon=True)

    @classmethod
    def for_output(cls, sampler: Sampler, *, json: bool, quiet: bool) -> Ticker:
        """Status lines with --json; a live line on a terminal unless --quiet; else off."""
        mode = "json" if json else ("tty" if sys.stderr.isatty() and not quiet else None)
        return cls(sampler, mode=mode)

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def __enter__(self) -> Ticker:
        if self.mode:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.mode:
            self._thread.join()
            if self.mode == "tty":
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()

    def _run(self) -> None:
        name_this_thread("cairn-progress")
        while not self._stop.wait(self.interval):
            sample = self.sampler()
            elapsed = time.monotonic() - self.start
            try:
                if self.mode == "json":
                    print_json(status_json(sample, elapsed))
                    sys.stdout.flush()
                else:
                    sys.stderr.write("\r\033[K" + status_line(sample, elapsed)[:160])
                    sys.stderr.flush()
            except (OSError, ValueError):
                return  # the reader went away (closed pipe): stop showing progress
