#!/usr/bin/env python3
"""cairn vs restic benchmark (issue 3): one command, see bench/README.md.

    python3 bench/run.py [--quick] [--datasets large,small,real] [--runs 3] [--workdir DIR]

For each dataset, both tools run interleaved in the same run (their order alternates
between runs): init, initial backup (cold and warm page cache), no-change backup (cold and
warm), backup after ``mutate``, full restore (verified against the source), ``check
--read-data`` and repository size. Results accumulate in ``WORKDIR/results.json`` (a run
of some datasets replaces only those) and are rendered to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import limits  # noqa: E402
import machine  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import treecmp  # noqa: E402

BENCH = Path(__file__).resolve().parent
PASSWORD = "benchmark password, not a secret"
TOOLS = {"cairn": "cairn", "restic": "/usr/bin/restic"}
HOST = "bench"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def freeze_cairn(workdir: Path) -> dict[str, Any]:
    """Copy the installed cairn package (with its built chunker) into the work directory,
    named by a hash of its content, so that one benchmark run measures one version of the
    code even while others edit the work tree. Returns where it is and what it is."""
    import cairn

    src = Path(cairn.__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        digest.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    tag = digest.hexdigest()[:16]
    dest = workdir / "cairn-frozen" / tag
    if not (dest / "cairn").is_dir():
        tmp = dest.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp / "cairn", ignore=shutil.ignore_patterns("__pycache__"))
        # Byte-compiled like an installed package (pip compiles at install), so a run does
        # not pay for compiling every module when PYTHONDONTWRITEBYTECODE is set.
        compileall.compile_dir(tmp / "cairn", quiet=1)
        tmp.rename(dest)

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True)
        return r.stdout.strip()

    return {
        "path": str(dest),
        "src_sha256": tag,
        "git_head": git("log", "-1", "--format=%h %s"),
        "git_dirty": len(git("status", "--porcelain", "--", ".").splitlines()),
    }


class Tool:
    """How to run one backup program: its command line and environment. ``frozen`` is a
    directory holding a copy of the ``cairn`` package to run instead of the installed one."""

    def __init__(self, name: str, workdir: Path, frozen: str | None = None) -> None:
        self.name = name
        self.exe = shutil.which(TOOLS[name]) or TOOLS[name]
        self.prefix = [self.exe]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "CAIRN_"))}
        if name == "cairn" and frozen:
            self.prefix = [sys.executable, "-m", "cairn"]
            env["PYTHONPATH"] = frozen
        prefix = name.upper()
        # Same password source for both; each keeps its cache inside the work directory.
        env[f"{prefix}_PASSWORD"] = PASSWORD
        env[f"{prefix}_CACHE_DIR"] = str(workdir / "cache" / name)
        self.env = env
        self.cache = workdir / "cache" / name

    def cmd(self, repo: Path, *args: str) -> list[str]:
        return [*self.prefix, "-r", str(repo), *args]


def repo_size(repo: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(repo):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def key_params(repo: Path) -> list[dict[str, Any]]:
    """scrypt parameters of the repository's key files (they are plain JSON), to show that
    both tools derive keys at the same cost."""
    out = []
    for f in sorted((repo / "keys").iterdir()):
        doc = json.loads(f.read_text())
        out.append({k: doc.get(k) for k in ("kdf", "N", "r", "p")})
    return out


def restored_root(target: Path, source: Path) -> Path:
    """Where the snapshot's copy of ``source`` landed below ``target``: ``backup .`` stores
    the contents at the root of the snapshot with both tools, but be tolerant."""
    nested = target / str(source).lstrip("/")
    return nested if nested.is_dir() else target


class Bench:
    """One benchmark session: work directory, options, accumulated results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.workdir / "commands.log"
        self.results_path = self.workdir / ("results-quick.json" if args.quick else "results.json")
        self.results: dict[str, Any] = (
            json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        )
        self.cold = measure.can_drop_caches()
        if not self.cold:
            log("cannot drop the page cache (not root?): 'cold' steps run with a warm cache")
        self.code: dict[str, Any] = {}
        if not args.no_freeze:
            self.code = freeze_cairn(self.workdir)
            log(
                f"cairn frozen at {self.code['path']} ({self.code['git_head']}, {self.code['git_dirty']} uncommitted files)"
            )
        frozen = self.code.get("path")
        self.tools = [Tool(t, self.workdir, frozen) for t in args.tools.split(",")]

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=1))
        out = Path(self.args.output)
        merged = report.load(self.results_path) if not self.args.quick else {}
        merged.update(self.results)
        out.write_text(report.render(merged))

    def drop(self) -> None:
        if self.cold:
            measure.drop_caches()

    def warm(self, root: Path) -> None:
        measure.run(
            ["sh", "-c", f"find '{root}' -type f -print0 | xargs -0 -r cat > /dev/null"],
            log=self.logfile,
        )

    # --- one dataset -------------------------------------------------------------------

    def dataset(self, name: str) -> None:
        spec = datasets.spec(name, self.args.quick)
        ddir = self.workdir / "datasets"
        stash = self.workdir / "mutate-stash" / name
        if datasets.revert(stash):
            log(f"{name}: reverted an interrupted mutate")
        t0 = time.monotonic()
        root = datasets.ensure(spec, ddir, log)
        gen_s = time.monotonic() - t0
        files, size = datasets.tree_bytes(root)
        log(f"{name}: {files} files, {size / 2**30:.2f} GiB at {root}")
        res: dict[str, Any] = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "params": spec.params,
            "files": files,
            "bytes": size,
            "generate_s": gen_s,
            "cold": self.cold,
            "runs": [],
            "machine": machine.describe(self.workdir),
            "argv": sys.argv,
            "code": self.code or {"frozen": False},
        }
        self.results[name] = res
        if not self.args.skip_limits:
            log(f"{name}: physical limits")
            res["limits"] = limits.measure_all(root, self.workdir, self.logfile, self.cold)
            self.save()
        for run in range(self.args.runs):
            order = self.tools if run % 2 == 0 else self.tools[::-1]
            log(f"{name}: run {run + 1}/{self.args.runs}, order {[t.name for t in order]}")
            res["runs"].append(self.one_run(name, root, stash, order))
            res["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
            self.save()

    def one_run(self, name: str, root: Path, stash: Path, order: list[Tool]) -> dict[str, Any]:
        """Every step for every tool, interleaved; repositories are removed at the end."""
        repos = self.workdir / "repos"
        shutil.rmtree(repos, ignore_errors=True)
        repos.mkdir()
        steps: dict[str, dict[str, Any]] = {}
        failed: set[str] = set()
        verify: dict[str, list[str]] = {}

        def step(label: str, tool: Tool, fn: Callable[[], measure.Sample]) -> None:
            if tool.name in failed:
                return
            try:
                sample = fn()
            except (measure.CommandFailed, OSError) as e:
                log(f"  {tool.name} {label} FAILED: {e}")
                failed.add(tool.name)
                steps.setdefault(label, {})[tool.name] = {"error": str(e)}
                return
            steps.setdefault(label, {})[tool.name] = sample.to_json()
            log(
                f"  {label:22s} {tool.name:7s} {sample.wall:7.2f}s wall {sample.cpu:7.2f}s cpu "
                f"{sample.maxrss_kib / 1024:6.0f} MiB load {sample.load_start:.2f}->{sample.load_end:.2f}"
            )

        def run(tool: Tool, *args: str, cold: bool, cwd: Path | None = None) -> measure.Sample:
            if cold:
                self.drop()
            return measure.run(
                tool.cmd(repos / tool.name, *args), env=tool.env, cwd=cwd, log=self.logfile
            )

        backup = ("backup", "--host", HOST, ".")
        for tool in order:
            shutil.rmtree(tool.cache, ignore_errors=True)
            step("init", tool, partial(run, tool, "init", "--repository-version", "2", cold=False))
            step("backup initial cold", tool, partial(run, tool, *backup, cold=True, cwd=root))
        for tool in order:
            # The same initial backup into a scratch repository with every file in memory.
            warm_repo = repos / f"{tool.name}-warm"

            def warm_backup(t: Tool = tool, repo: Path = warm_repo) -> measure.Sample:
                measure.run(
                    t.cmd(repo, "init", "--repository-version", "2"), env=t.env, log=self.logfile
                )
                self.warm(root)
                try:
                    return measure.run(t.cmd(repo, *backup), env=t.env, cwd=root, log=self.logfile)
                finally:
                    shutil.rmtree(repo, ignore_errors=True)

            step("backup initial warm", tool, warm_backup)
        for tool in order:
            step("backup no-change cold", tool, partial(run, tool, *backup, cold=True, cwd=root))
        for tool in order:
            step("backup no-change warm", tool, partial(run, tool, *backup, cold=False, cwd=root))
        journal = datasets.mutate(root, stash)
        try:
            for tool in order:
                step("backup after mutate", tool, partial(run, tool, *backup, cold=True, cwd=root))
            source = treecmp.snapshot(root)
            for tool in order:
                target = self.workdir / "restore" / tool.name
                shutil.rmtree(target, ignore_errors=True)
                target.parent.mkdir(exist_ok=True)
                step(
                    "restore",
                    tool,
                    partial(run, tool, "restore", "latest", "--target", str(target), cold=True),
                )
                if tool.name not in failed:
                    problems = treecmp.compare(
                        source, treecmp.snapshot(restored_root(target, root))
                    )
                    verify[tool.name] = problems
                    log(f"  restore verify {tool.name}: {'OK' if not problems else problems[:3]}")
                shutil.rmtree(target, ignore_errors=True)
            for tool in order:
                step(
                    "check --read-data",
                    tool,
                    partial(run, tool, "check", "--read-data", cold=True),
                )
        finally:
            datasets.revert(stash)
        sizes = {t.name: repo_size(repos / t.name) for t in order if (repos / t.name).exists()}
        kdf = {t.name: key_params(repos / t.name) for t in order if (repos / t.name).exists()}
        shutil.rmtree(repos, ignore_errors=True)
        for tool in order:
            shutil.rmtree(tool.cache, ignore_errors=True)
        return {
            "order": [t.name for t in order],
            "steps": steps,
            "repo_size": sizes,
            "kdf": kdf,
            "verify": verify,
            "mutate_ops": len(journal["ops"]),
        }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny datasets (tens of MB), one run")
    p.add_argument("--datasets", default="large,small,real", help="comma-separated list")
    p.add_argument("--runs", type=int, default=None, help="runs per dataset (default 3, quick 1)")
    p.add_argument("--workdir", default=str(BENCH / "work"), help="datasets, repositories, logs")
    p.add_argument("--tools", default="cairn,restic")
    p.add_argument(
        "--no-freeze",
        action="store_true",
        help="run the installed cairn as it changes (default: a frozen copy made at start)",
    )
    p.add_argument("--skip-limits", action="store_true", help="do not measure physical limits")
    p.add_argument(
        "--output",
        default=None,
        help="report (default bench/RESULTS.md; quick: WORKDIR/RESULTS-quick.md)",
    )
    args = p.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.output is None:
        args.output = (
            str(Path(args.workdir) / "RESULTS-quick.md")
            if args.quick
            else str(BENCH / "RESULTS.md")
        )
    bench = Bench(args)
    log(f"work directory {bench.workdir}; report {args.output}")
    for name in args.datasets.split(","):
        bench.dataset(name)
    bench.save()
    log(f"done: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
