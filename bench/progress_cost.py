#!/usr/bin/env python3
"""What the progress display costs: the same initial backup with ``-q`` (no display),
on a terminal (a pseudo-terminal from ``script``: the refreshed status line plus the
scanner that counts totals for the ETA), and with ``--json`` status lines.

    python3 bench/progress_cost.py [--dataset large|small|PATH] [--runs 3]

Variants are interleaved per run; the page cache is warm (the source is read first) so
that the comparison is of CPU work, not of the disk. Prints the medians and the overhead
of each display against ``-q``; the target is under 2% of throughput.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
from run import HOST, Tool, freeze_cairn, log  # noqa: E402

VARIANTS = ("quiet", "tty", "json")


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
    measure.run(["sh", "-c", f"find '{root}' -type f -print0 | xargs -0 -r cat > /dev/null"])
    for n in range(args.runs):
        order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(tool.cache, ignore_errors=True)
            repo.parent.mkdir(parents=True, exist_ok=True)
            measure.run(tool.cmd(repo, "init"), env=tool.env, log=logfile)
            s = measure.run(command(tool, repo, variant), env=tool.env, cwd=root, log=logfile)
            walls[variant].append(s.wall)
            cpus[variant].append(s.cpu)
            log(f"run {n + 1} {variant:5s} {s.wall:6.2f}s wall {s.cpu:6.2f}s cpu")
    shutil.rmtree(repo, ignore_errors=True)
    base_w = statistics.median(walls["quiet"])
    base_c = statistics.median(cpus["quiet"])
    print(f"\nprogress cost on {root} ({args.runs} runs, cairn {code['git_head']}):")
    print("| display | median wall s | median CPU s | wall overhead | CPU overhead |")
    print("|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        w, c = statistics.median(walls[v]), statistics.median(cpus[v])
        print(
            f"| {v} | {w:.2f} | {c:.2f} | {100 * (w / base_w - 1):+.1f}% | "
            f"{100 * (c / base_c - 1):+.1f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
