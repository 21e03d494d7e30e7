#!/usr/bin/env python3
"""What the progress display costs: the same initial backup with ``-q`` (no display),
on a terminal (a pseudo-terminal from ``script``: the refreshed status line plus the
scanner that counts totals for the ETA), and with ``--json`` status lines.

    python3 bench/progress_cost.py [--dataset large|small|PATH] [--runs 3]

Variants are interleaved per run; the page cache is warm (the source is read first) so
that the comparison is of CPU work, not of the disk. Prints the medians and the overhead
of each display against ``-q``; the target is under 2% of throughput.

The wall and CPU times of whole runs differ by more than 2% from run to run on a shared
machine, so the cost is also measured directly: the CPU time of the display's own
threads (the status ticker and the scanner, which cairn names for the kernel), read from
``/proc`` while the backup runs, as a share of the whole run's CPU time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
from run import HOST, Tool, freeze_cairn, log  # noqa: E402

VARIANTS = ("quiet", "tty", "json")
#: the threads that exist only to show progress (cairn/cli/progress.py, archiver/scanner.py)
DISPLAY_THREADS = ("cairn-progress", "cairn-scan")


class ThreadCpu(threading.Thread):
    """Sums, for every thread named in ``names`` in the processes below this one, the CPU
    time it has used (utime + stime), sampled every ``interval`` seconds: a thread that
    ends loses at most one interval of its time."""

    def __init__(self, names: tuple[str, ...], interval: float = 0.02):
        super().__init__(name="bench-thread-cpu", daemon=True)
        self.names = names
        self.interval = interval
        self.ticks: dict[tuple[int, int], int] = {}
        self._stop_event = threading.Event()

    def stop(self) -> float:
        """Stop sampling; the CPU seconds of the named threads."""
        self._stop_event.set()
        self.join()
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            for pid in measure._descendants(os.getpid()):
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    try:
                        with open(f"/proc/{pid}/task/{tid}/stat") as f:
                            stat = f.read()
                    except OSError:
                        continue
                    # comm is in parentheses and may hold spaces; the fields follow it
                    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                    if comm in self.names:
                        fields = stat[stat.rindex(")") + 2 :].split()
                        self.ticks[(pid, int(tid))] = int(fields[11]) + int(fields[12])


def command(tool: Tool, repo: Path, variant: str) -> list[str]:
    base = tool.cmd(repo, "backup", "--host", HOST, ".")
    if variant == "quiet":
        return [*base[:-4], "-q", *base[-4:]]
    if variant == "json":
        # status lines go to stdout; a shell redirect keeps them out of the log
        return ["sh", "-c", shlex.join([*base[:-4], "--json", *base[-4:]]) + " > /dev/null"]
    # script(1) gives the command a pseudo-terminal, so it shows the live status line
    return ["script", "-qefc", shlex.join(base), "/dev/null"]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset", default="large", help="a dataset name in WORKDIR/datasets or a path"
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "work"))
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    root = Path(args.dataset)
    if not root.is_absolute():
        root = workdir / "datasets" / args.dataset
    if not root.is_dir():
        p.error(f"no dataset at {root} (run bench/run.py first to generate it)")
    code = freeze_cairn(workdir)
    tool = Tool("cairn", workdir, code["path"])
    logfile = workdir / "progress-commands.log"
    repo = workdir / "repos" / "progress"
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    display: dict[str, list[float]] = {v: [] for v in VARIANTS}
    measure.run(["sh", "-c", f"find '{root}' -type f -print0 | xargs -0 -r cat > /dev/null"])
    for n in range(args.runs):
        order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(tool.cache, ignore_errors=True)
            repo.parent.mkdir(parents=True, exist_ok=True)
            measure.run(tool.cmd(repo, "init"), env=tool.env, log=logfile)
            threads = ThreadCpu(DISPLAY_THREADS)
            threads.start()
            try:
                s = measure.run(command(tool, repo, variant), env=tool.env, cwd=root, log=logfile)
            finally:
                own = threads.stop()
            walls[variant].append(s.wall)
            cpus[variant].append(s.cpu)
            display[variant].append(own)
            log(
                f"run {n + 1} {variant:5s} {s.wall:6.2f}s wall {s.cpu:6.2f}s cpu, "
                f"display threads {own:.2f}s cpu"
            )
    shutil.rmtree(repo, ignore_errors=True)
    base_w = statistics.median(walls["quiet"])
    base_c = statistics.median(cpus["quiet"])
    print(f"\nprogress cost on {root} ({args.runs} runs, cairn {code['git_head']}):")
    print(
        "| display | median wall s | median CPU s | wall vs -q | CPU vs -q | "
        "display threads CPU s | share of the run's CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        w, c = statistics.median(walls[v]), statistics.median(cpus[v])
        own = statistics.median(display[v])
        share = statistics.median(d / t for d, t in zip(display[v], cpus[v], strict=True))
        print(
            f"| {v} | {w:.2f} | {c:.2f} | {100 * (w / base_w - 1):+.1f}% | "
            f"{100 * (c / base_c - 1):+.1f}% | {own:.2f} | {100 * share:.2f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
