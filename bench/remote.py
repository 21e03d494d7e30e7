#!/usr/bin/env python3
"""cairn vs restic over remote backends on loopback (issue 4): see bench/README.md.

    python3 bench/remote.py [--size-mib 500] [--runs 3] [--backends sftp,rest] [--quick]

One deterministic dataset (half incompressible, half text-like; half of the bytes in a few
large files, half in many small ones) is backed up to and restored from a real OpenSSH
server (``sftp:``) and ``rclone serve restic`` (``rest:``), both on 127.0.0.1 and started
with the test suite's own start-up code (tests/backend/sshd.py, rclone_server.py). For each
backend both tools run interleaved, step by step, their order alternating between runs:
``init`` (real calibrated scrypt for both), ``backup``, ``restore`` (the restored tree is
compared with the source). Each command runs under ``/usr/bin/time -v`` with the load
average before and after. The report gives medians, the cairn/restic ratio and the issue's
target (wall time at most 1.1x restic's), and is written to bench/RESULTS-remote.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO_ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(REPO_ROOT))  # tests.backend.* (server start-up code)

import datasets  # noqa: E402
import machine  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import run as harness  # noqa: E402
import treecmp  # noqa: E402
from tests.backend.rclone_server import RestServer, rclone_rest_server  # noqa: E402
from tests.backend.sshd import HOST_ALIAS, start_sshd, write_client_config  # noqa: E402

MiB = datasets.MiB
TARGET = 1.1  # issue 4: cairn's wall time at most 1.1x restic's, backup and restore
STEPS = ["init", "backup", "restore"]
#: bump when the generator below changes (the stamp then no longer matches)
MIXED_VERSION = 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- dataset ---------------------------------------------------------------------------


def mixed_params(size_mib: int) -> dict[str, Any]:
    """Half of the bytes in 4 large files (2 random, 2 text), half in small files of
    4 KiB-256 KiB (log-uniform, ~60 KiB mean; half text, half random)."""
    return {"kind": "mixed", "version": MIXED_VERSION, "size_mib": size_mib, "seed": "remote"}


def _gen_mixed(root: Path, p: dict[str, Any]) -> None:
    total = p["size_mib"] * MiB
    seed = p["seed"]
    text = datasets.TextPool(seed)
    rand = datasets.RandomStream(seed)
    big = total // 2 // 4
    for name in ("big/random-1.bin", "big/random-2.bin"):
        datasets.write_stream(root / name, big, rand)
    for name in ("big/text-1.txt", "big/text-2.txt"):
        datasets.write_stream(root / name, big, text)
    rng = random.Random(seed)
    left = total - 4 * big
    i = 0
    while left > 0:
        size = min(left, int(4096 * 64 ** rng.random()))
        is_text = rng.random() < 0.5
        d = root / "small" / f"d{i % 16:02d}" / f"e{(i // 16) % 8}"
        d.mkdir(parents=True, exist_ok=True)
        data = text.read(size) if is_text else rand.read(size)
        (d / f"f{i:06d}.{'txt' if is_text else 'bin'}").write_bytes(data)
        left -= size
        i += 1


def ensure_mixed(params: dict[str, Any], datasets_dir: Path) -> Path:
    """The dataset's directory, generated unless one with the same stamp exists (the same
    scheme as ``datasets.ensure``, whose generators are fixed to its three datasets)."""
    name = f"remote-{params['size_mib']}mib"
    root = datasets_dir / name
    stamp = datasets_dir / f"{name}.stamp"
    text = json.dumps(params, sort_keys=True)
    if root.is_dir() and stamp.is_file() and stamp.read_text() == text:
        return root
    log(f"generating dataset {name} in {root}")
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    tmp = datasets_dir / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _gen_mixed(tmp, params)
    datasets._fix_times(tmp)  # same fixed mtimes as the suite's datasets
    tmp.rename(root)
    stamp.write_text(text)
    return root


# --- servers ---------------------------------------------------------------------------


class Remote:
    """One running server: how to name a repository on it for the tools, and where that
    repository lies on the local disk (for key parameters, size and removal)."""

    def __init__(self, name: str, root: Path, options: list[str], url_of: Any) -> None:
        self.name = name
        self.root = root  # local directory holding the repositories
        self.options = options  # extra global options for both tools (-o ...)
        self._url_of = url_of

    def url(self, repo: str) -> str:
        return str(self._url_of(repo))

    def path(self, repo: str) -> Path:
        return self.root / repo


@contextlib.contextmanager
def sftp_remote(workdir: Path) -> Iterator[Remote]:
    sshd_dir = workdir / "sshd"
    shutil.rmtree(sshd_dir, ignore_errors=True)
    server = start_sshd(sshd_dir)
    try:
        # No ControlMaster: every ssh process makes its own connection, as for a user.
        cfg = sshd_dir / "ssh_config_plain"
        write_client_config(cfg, server.port, server.identity, server.known_hosts)
        root = workdir / "sftp-root"
        root.mkdir(exist_ok=True)
        command = f"ssh -F {cfg} {HOST_ALIAS} -s sftp"
        yield Remote(
            "sftp",
            root,
            ["-o", f"sftp.command={command}"],
            lambda repo: f"sftp:{HOST_ALIAS}:{root / repo}",
        )
    finally:
        server.stop()
        shutil.rmtree(sshd_dir, ignore_errors=True)


@contextlib.contextmanager
def rest_remote(workdir: Path) -> Iterator[Remote]:
    root = workdir / "rest-root"
    root.mkdir(exist_ok=True)
    # rclone's object cache on: rclone's default, what a user would run.
    with rclone_rest_server(root, cache_objects=True) as server:
        srv: RestServer = server
        yield Remote("rest", root, [], lambda repo: srv.repo_url(repo))


SERVERS = {"sftp": sftp_remote, "rest": rest_remote}


# --- one run ---------------------------------------------------------------------------


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.workdir / "commands.log"
        self.code: dict[str, Any] = {}
        if not args.no_freeze:
            self.code = harness.freeze_cairn(self.workdir)
            log(f"cairn frozen at {self.code['path']} ({self.code['git_head']})")
        frozen = self.code.get("path")
        self.tools = [harness.Tool(t, self.workdir, frozen) for t in ("cairn", "restic")]
        self.cold = args.cold and measure.can_drop_caches()

    def cmd(self, tool: harness.Tool, remote: Remote, repo: str, *args: str) -> list[str]:
        return [*tool.prefix, "-r", remote.url(repo), *remote.options, *args]

    def warm(self, root: Path) -> None:
        if self.cold:
            measure.drop_caches()
        else:  # every file in the page cache: both tools read from memory
            measure.run(
                ["sh", "-c", f"find '{root}' -type f -print0 | xargs -0 -r cat > /dev/null"],
                log=self.logfile,
            )

    def one_run(
        self, remote: Remote, root: Path, source: dict[str, treecmp.Entry], n: int
    ) -> dict[str, Any]:
        order = self.tools if n % 2 == 0 else self.tools[::-1]
        log(f"{remote.name}: run {n + 1}/{self.args.runs}, order {[t.name for t in order]}")
        steps: dict[str, dict[str, Any]] = {}
        verify: dict[str, list[str]] = {}
        failed: set[str] = set()
        repo = {t.name: f"repo-{t.name}-{n}" for t in order}

        def step(label: str, tool: harness.Tool, *args: str, cwd: Path | None = None) -> None:
            if tool.name in failed:
                return
            try:
                s = measure.run(
                    self.cmd(tool, remote, repo[tool.name], *args),
                    env=tool.env,
                    cwd=cwd,
                    log=self.logfile,
                )
            except (measure.CommandFailed, OSError) as e:
                log(f"  {label:8s} {tool.name:7s} FAILED: {e}")
                failed.add(tool.name)
                steps.setdefault(label, {})[tool.name] = {"error": str(e)}
                return
            steps.setdefault(label, {})[tool.name] = s.to_json()
            log(
                f"  {label:8s} {tool.name:7s} {s.wall:7.2f}s wall {s.cpu:7.2f}s cpu "
                f"{s.maxrss_kib / 1024:6.0f} MiB load {s.load_start:.2f}->{s.load_end:.2f}"
            )

        try:
            for tool in order:
                shutil.rmtree(remote.path(repo[tool.name]), ignore_errors=True)
                shutil.rmtree(tool.cache, ignore_errors=True)
                step("init", tool, "init", "--repository-version", "2")
            for tool in order:
                self.warm(root)
                step("backup", tool, "backup", "--host", harness.HOST, ".", cwd=root)
            for tool in order:
                target = self.workdir / "restore" / tool.name
                shutil.rmtree(target, ignore_errors=True)
                target.parent.mkdir(exist_ok=True)
                if self.cold:
                    measure.drop_caches()
                step("restore", tool, "restore", "latest", "--target", str(target))
                if tool.name not in failed:
                    got = treecmp.snapshot(harness.restored_root(target, root))
                    verify[tool.name] = treecmp.compare(source, got)
                    ok = not verify[tool.name]
                    log(f"  verify   {tool.name:7s} {'OK' if ok else verify[tool.name][:3]}")
                shutil.rmtree(target, ignore_errors=True)
            sizes = {t.name: harness.repo_size(remote.path(repo[t.name])) for t in order}
            kdf = {t.name: harness.key_params(remote.path(repo[t.name])) for t in order}
        finally:
            for tool in order:
                shutil.rmtree(remote.path(repo[tool.name]), ignore_errors=True)
                shutil.rmtree(tool.cache, ignore_errors=True)
        return {
            "order": [t.name for t in order],
            "steps": steps,
            "verify": verify,
            "repo_size": sizes,
            "kdf": kdf,
        }


# --- report ----------------------------------------------------------------------------


def render(res: dict[str, Any]) -> str:
    mib = res["bytes"] / MiB
    out = [
        "# Remote backends: cairn vs restic 0.14 over SFTP and REST on loopback (issue 4)",
        "",
        "Generated by `python3 bench/remote.py` (see bench/README.md); do not edit by hand.",
        f"Target: wall time of backup and restore at most **{TARGET}x** restic's, same server, "
        "same run.",
        "",
        f"- started {res['started']}, finished {res.get('finished', '–')}; "
        f"command `{' '.join(res['argv'])}`",
        f"- dataset: {res['files']} files, {mib:.0f} MiB ({res['params']}) at `{res['root']}`",
        f"- runs: {res['runs_requested']}; page cache: "
        f"{'dropped before backup and restore' if res['cold'] else 'warm (source read before each backup)'}",
        f"- code: {res['code'] or 'installed cairn, not frozen'}",
        "- servers: OpenSSH `sshd` (internal-sftp, one ssh connection per ssh process, no "
        "ControlMaster); `rclone serve restic` (object cache on)",
        "",
    ]
    for backend, b in res["backends"].items():
        runs = b["runs"]
        out += [f"## {backend}", ""]
        out += [
            "| step | tool | median wall s | MiB/s | median CPU s | median peak RSS MiB "
            "| walls | load (min-max) | cairn/restic wall | target | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for step in STEPS:
            st = {t: report.step_stats(runs, step, t) for t in ("cairn", "restic")}
            ratio = report._ratio(st["cairn"]["wall"], st["restic"]["wall"])
            target = TARGET if step != "init" else None
            for tool, s in st.items():
                rate = mib / s["wall"] if s["wall"] and step != "init" else None
                load = f"{s['load'][0]:.2f}-{s['load'][1]:.2f}" if s["load"] else "–"
                walls = ", ".join(f"{w:.2f}" for w in s["walls"]) or "–"
                errs = f" errors: {s['errors']}" if s["errors"] else ""
                last = tool == "restic"
                out.append(
                    f"| {step} | {tool} | {report._fmt(s['wall'])} | {report._fmt(rate, '.0f')} "
                    f"| {report._fmt(s['cpu'])} | {report._fmt(s['rss'], '.0f')} | {walls}{errs} "
                    f"| {load} | {report._fmt(ratio) if last else ''} "
                    f"| {target if (last and target) else ''} "
                    f"| {report._verdict(ratio, target) if last else ''} |"
                )
        verify = [f"{r['order']}: {r['verify']}" for r in runs]
        out += ["", "Restore verification (empty list = identical to the source):", ""]
        out += [f"- run {i + 1}: {v}" for i, v in enumerate(verify)]
        if runs:
            out += [
                f"- repository sizes (last run): {runs[-1]['repo_size']}",
                f"- key derivation (last run): {runs[-1]['kdf']}",
            ]
        out.append("")
    m = res["machine"]
    out += ["## Machine", ""] + [f"- {k}: {v}" for k, v in m.items()] + [""]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mib", type=int, default=None, help="dataset size (default 500)")
    p.add_argument("--runs", type=int, default=None, help="runs per backend (default 3)")
    p.add_argument("--backends", default="sftp,rest", help="comma-separated: sftp,rest")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 MiB, 1 run")
    p.add_argument(
        "--cold", action="store_true", help="drop the page cache before each backup/restore"
    )
    p.add_argument("--workdir", default=str(BENCH / "work" / "remote"))
    p.add_argument("--no-freeze", action="store_true", help="run the installed cairn as is")
    p.add_argument(
        "--output",
        default=None,
        help="report (default bench/RESULTS-remote.md; quick: WORKDIR/RESULTS-remote-quick.md)",
    )
    args = p.parse_args()
    if args.size_mib is None:
        args.size_mib = 8 if args.quick else 500
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    backends = args.backends.split(",")
    for b in backends:
        if b not in SERVERS:
            p.error(f"unknown backend {b!r} (choose from {', '.join(SERVERS)})")
    if args.output is None:
        args.output = str(
            Path(args.workdir) / "RESULTS-remote-quick.md"
            if args.quick
            else BENCH / "RESULTS-remote.md"
        )

    session = Session(args)
    workdir = session.workdir
    root = ensure_mixed(mixed_params(args.size_mib), workdir / "datasets")
    files, size = datasets.tree_bytes(root)
    log(f"dataset: {files} files, {size / MiB:.0f} MiB at {root}")
    source = treecmp.snapshot(root)
    res: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": ["bench/remote.py", *sys.argv[1:]],
        "params": mixed_params(args.size_mib),
        "root": str(root),
        "files": files,
        "bytes": size,
        "runs_requested": args.runs,
        "cold": session.cold,
        "code": session.code,
        "machine": machine.describe(workdir),
        "backends": {},
    }
    results_json = workdir / ("results-remote-quick.json" if args.quick else "results-remote.json")
    out = Path(args.output)

    def save() -> None:
        res["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        results_json.write_text(json.dumps(res, indent=1))
        out.write_text(render(res))

    for backend in backends:
        with SERVERS[backend](workdir) as remote:
            log(f"{backend}: server up, repositories in {remote.root}")
            entry: dict[str, Any] = {"runs": []}
            res["backends"][backend] = entry
            try:
                for n in range(args.runs):
                    entry["runs"].append(session.one_run(remote, root, source, n))
                    save()
            finally:
                shutil.rmtree(remote.root, ignore_errors=True)
    for scratch in ("restore", "cache"):
        shutil.rmtree(workdir / scratch, ignore_errors=True)
    save()
    print()
    print(render(res).split("## Machine")[0])
    log(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
