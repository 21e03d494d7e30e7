#!/usr/bin/env python3
"""Profile cairn's steps on a benchmark dataset with py-spy (``pip install py-spy``).

    python3 bench/spy.py [--dataset small] [--steps backup,nochange,restore,check]

Runs each step once (warm cache) under ``py-spy record`` (all threads, native frames off),
keeps the collapsed stacks in ``WORKDIR/profiles/`` and prints the top functions by self
time and by inclusive time, as shares of all samples (idle threads excluded).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import HOST, Tool, freeze_cairn  # noqa: E402

_FRAME = re.compile(r"^(.*) \((?:.*/)?([^/]+?)(?::\d+)?\)$")


#: Leaf frames of a thread that waits (for work, a lock, a queue): not CPU time.
_WAITING = (
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Queue.get (queue.py",
    "Semaphore.acquire (threading.py",
    "Event.wait (threading.py",
)


def summarize(collapsed: Path, top: int) -> list[str]:
    """Top frames from py-spy's collapsed ("raw") output: self time per source line and
    inclusive time per function, as shares of the samples of threads that were not
    waiting (py-spy's idle filter misses threads blocked in ``Condition.wait``)."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(_WAITING):
            waiting += n
            continue
        total += n
        self_n[frames[-1]] += n
        for f in {_FRAME.sub(r"\1 (\2)", f) for f in frames}:
            incl_n[f] += n
    out = [f"{total} busy samples ({waiting} more waiting); self time by line:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_n.most_common(top)]
    out.append("inclusive time by function (thread/CLI entry frames omitted):")
    skip = (
        "Thread.",
        "_worker (",
        "_WorkItem.run",
        "<module>",
        "_run_",
        "Command.",
        "Context.",
        "Group.",
        "make_pass_decorator",
        "main (",
    )
    common = [(f, n) for f, n in incl_n.most_common() if not f.startswith(skip)]
    out += [f"  {n / total:6.1%}  {f}" for f, n in common[:top]]
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="small")
    p.add_argument("--steps", default="backup,nochange,restore,check")
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "work"))
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    root = workdir / "datasets" / args.dataset
    if not root.is_dir():
        sys.exit(f"no dataset at {root}: run bench/run.py first")
    tool = Tool("cairn", workdir, freeze_cairn(workdir)["path"])
    repo = workdir / "repos" / "profile"
    target = workdir / "restore" / "profile"
    outdir = workdir / "profiles"
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(tool.cmd(repo, "init"), env=tool.env, check=True, capture_output=True)
    commands = {
        "backup": (tool.cmd(repo, "backup", "--host", HOST, "."), root),
        "nochange": (tool.cmd(repo, "backup", "--host", HOST, "."), root),
        "restore": (tool.cmd(repo, "restore", "latest", "--target", str(target)), None),
        "check": (tool.cmd(repo, "check", "--read-data"), None),
    }
    try:
        if "backup" not in args.steps.split(","):
            subprocess.run(
                commands["backup"][0], env=tool.env, cwd=root, check=True, capture_output=True
            )
        for step in args.steps.split(","):
            cmd, cwd = commands[step]
            shutil.rmtree(target, ignore_errors=True)
            out = outdir / f"{args.dataset}-{step}.collapsed"
            spy = [
                "py-spy",
                "record",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "-o",
                str(out),
                "--",
            ]
            subprocess.run(spy + cmd, env=tool.env, cwd=cwd, check=True, capture_output=True)
            print(f"## cairn {step}, dataset {args.dataset}")
            print("\n".join(summarize(out, args.top)))
            print()
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
