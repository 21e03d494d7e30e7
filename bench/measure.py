"""Running one timed command: wall time, CPU time and peak RSS from ``/usr/bin/time -v``,
plus the load average before and after (other people share the machine), and dropping
the page cache for cold-cache steps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

TIME = "/usr/bin/time"


@dataclass
class Sample:
    """One measured command."""

    wall: float
    user: float
    sys: float
    #: the peak of the larger of: ``/usr/bin/time``'s maximum RSS (one process: for a
    #: process tree it reports the largest single member) and the sampled sum over the
    #: whole tree (below), so a tool that forks workers is billed for all of them
    maxrss_kib: int
    rc: int
    load_start: float
    load_end: float
    #: peak of the proportional set sizes summed over the command's processes, sampled
    #: every 20 ms while it had more than one (0: it never did)
    tree_pss_kib: int = 0

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cpu": self.cpu}


class CommandFailed(RuntimeError):
    pass


def loadavg() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _parse_elapsed(text: str) -> float:
    # "h:mm:ss" or "m:ss.ss"
    parts = [float(p) for p in text.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return secs


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log: Path | None = None,
    timeout: float = 3600,
    check: bool = True,
    settle: bool = True,
) -> Sample:
    """Run ``cmd`` under ``/usr/bin/time -v``; its output is appended to ``log``.

    With ``settle`` (the default) the disk is quiet first: dirty pages that an earlier
    step left behind (a 500 MiB restore ends long before the kernel has written it)
    would otherwise be written back during this step and bill it for them."""
    if settle:
        settle_writeback()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        report = os.path.join(tmp, "time")
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = stack.enter_context(open(log, "ab"))
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
        load_start = loadavg()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [TIME, "-v", "-o", report, *cmd],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        sampler = TreeMemory(proc.pid)
        sampler.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            sampler.stop()
        wall = time.monotonic() - t0
        load_end = loadavg()
        fields: dict[str, str] = {}
        with open(report) as f:
            for line in f:
                key, sep, value = line.strip().rpartition(": ")
                if sep:
                    fields[key] = value
    elapsed = fields.get("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    sample = Sample(
        # Our own clock: /usr/bin/time rounds to 10 ms.
        wall=wall if wall > 0 else _parse_elapsed(elapsed or "0"),
        user=float(fields.get("User time (seconds)", "nan")),
        sys=float(fields.get("System time (seconds)", "nan")),
        maxrss_kib=max(
            int(fields.get("Maximum resident set size (kbytes)", "0")), sampler.peak_kib
        ),
        rc=proc.returncode,
        load_start=load_start,
        load_end=load_end,
        tree_pss_kib=sampler.peak_kib,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited with {proc.returncode} (see {log})")
    return sample


class TreeMemory(threading.Thread):
    """Samples the memory of a command that forks: the sum of the proportional set sizes
    (PSS: a page shared by n processes counts 1/n in each, so pages a fork shares are
    counted once) of every process below ``root`` (``/usr/bin/time``, not counted), while
    there are at least two. A single process is left to ``/usr/bin/time``, which sees
    every peak.

    Ten samples a second: reading smaps_rollup walks a process's page tables under its
    memory-map lock, and at 50 a second that made the measured cairn (three processes)
    slower by 10% (warm /usr/lib+share backup: 12.0-12.3 s sampled, 10.9-11.1 s not),
    while restic, one process, is never sampled. At 10 a second: 1-3% slower, and the
    same peaks (189-201 MiB; memory plateaus for seconds)."""

    def __init__(self, root: int, interval: float = 0.1):
        super().__init__(name="bench-tree-memory", daemon=True)
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            procs = _descendants(self.root)
            if len(procs) >= 2:
                self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in procs))


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue  # gone, or a kernel without the children file
        found.extend(kids)
        todo.extend(kids)
    return found


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass  # exited between the listing and the read
    return 0


def _dirty_kib() -> int:
    """Dirty plus under-writeback page cache, in KiB, from /proc/meminfo."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Dirty", "Writeback"):
                total += int(rest.split()[0])
    return total


def settle_writeback(limit_kib: int = 8192, timeout: float = 120.0) -> float:
    """Write every dirty page back and wait until the kernel reports the disk idle
    (under ``limit_kib`` dirty or in flight); returns the seconds it took."""
    t0 = time.monotonic()
    os.sync()
    while _dirty_kib() > limit_kib and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return time.monotonic() - t0


def can_drop_caches() -> bool:
    """True if this process may write /proc/sys/vm/drop_caches (root, not in a locked
    container)."""
    try:
        drop_caches()
        return True
    except OSError:
        return False


def drop_caches() -> None:
    """Write dirty pages back, then drop the page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
