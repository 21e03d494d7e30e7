#!/usr/bin/env python3
"""Scale (b) and (c): how backup time and memory grow with the number of files and bytes.

For each size, smallest first: generate the dataset (kept for reuse), then for each tool
a fresh repository, the initial backup (cold cache) and a no-change backup (cold and
warm), with wall time, CPU time and peak RSS. The 1,000,000-file row answers (b): cairn's
peak RSS must stay under 1 GiB and its no-change backup be at least 2x faster than restic's.

    python3 bench/scale_files.py [--files 10000,100000,1000000] [--gib 1,2,4]
                                 [--tools cairn,restic] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import measure  # noqa: E402
from run import HOST, Tool, freeze_cairn, log  # noqa: E402

MiB = datasets.MiB


def gen_files(root: Path, n: int) -> None:
    """``n`` small files (256 B-4 KiB, log-uniform), half text, 50 per directory."""
    rng = random.Random(f"scale-files-{n}")
    text = datasets.TextPool("scale")
    rand = datasets.RandomStream(f"scale-files-{n}")
    made: set[str] = set()
    for i, d in enumerate(datasets.small_layout(n)):
        if d not in made:
            (root / d).mkdir(parents=True, exist_ok=True)
            made.add(d)
        size = int(256 * 16 ** rng.random())
        data = text.read(size) if rng.random() < 0.5 else rand.read(size)
        (root / d / f"f{i:07d}").write_bytes(data)


def gen_bytes(root: Path, gib: int) -> None:
    """``gib`` GiB in 256 MiB files, alternately random and text."""
    text = datasets.TextPool("scale")
    for i in range(gib * 4):
        src = datasets.RandomStream(f"scale-gib-{i}") if i % 2 == 0 else text
        datasets.write_stream(root / f"part-{i:03d}.bin", 256 * MiB, src)


def ensure(workdir: Path, kind: str, value: int) -> Path:
    name = f"scale-{kind}-{value}"
    spec = datasets.Spec(name, {"kind": kind, "value": value})
    root = workdir / "datasets" / name
    stamp = workdir / "datasets" / f"{name}.stamp"
    want = json.dumps({"version": datasets.GENERATOR_VERSION, **spec.params}, sort_keys=True)
    if root.is_dir() and stamp.is_file() and stamp.read_text() == want:
        return root
    log(f"generating {name}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (gen_files if kind == "files" else gen_bytes)(root, value)
    stamp.write_text(want)
    return root


def measure_tool(
    tool: Tool, root: Path, repo: Path, logfile: Path, timeout: float
) -> dict[str, Any]:
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(tool.cache, ignore_errors=True)
    out: dict[str, Any] = {}
    env = tool.env
    try:
        measure.run(tool.cmd(repo, "init", "--repository-version", "2"), env=env, log=logfile)
        backup = tool.cmd(repo, "backup", "--host", HOST, ".")
        for label, cold in (("initial", True), ("nochange_cold", True), ("nochange_warm", False)):
            if cold:
                measure.drop_caches()
            s = measure.run(backup, env=env, cwd=root, log=logfile, timeout=timeout)
            out[label] = s.to_json()
            log(
                f"  {tool.name} {label}: {s.wall:.1f}s wall, {s.cpu:.1f}s cpu, {s.maxrss_kib / 1024:.0f} MiB"
            )
    except (measure.CommandFailed, OSError, TimeoutError) as e:
        out["error"] = str(e)
        log(f"  {tool.name} FAILED: {e}")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(tool.cache, ignore_errors=True)
    return out


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    md = [
        "## Scale (b, c): growth with files and bytes",
        "",
        "`python3 bench/scale_files.py`; initial backup with a cold cache, then no-change "
        "backups (cold, warm). Per-unit columns show linearity: µs per file, s per GiB.",
        "",
        "| dataset | tool | initial s | initial CPU s | initial RSS MiB | per unit | no-change cold s | no-change warm s | no-change RSS MiB | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        for tool, r in row["tools"].items():
            if "initial" not in r:
                md.append(
                    f"| {row['name']} | {tool} | failed: {r.get('error', '?')} | | | | | | | |"
                )
                continue
            i, c, w = r["initial"], r.get("nochange_cold"), r.get("nochange_warm")
            unit = (
                f"{i['wall'] / row['files'] * 1e6:.0f} µs/file"
                if row["kind"] == "files"
                else f"{i['wall'] / row['value']:.1f} s/GiB"
            )
            loads = [x for s in (i, c, w) if s for x in (s["load_start"], s["load_end"])]
            md.append(
                f"| {row['name']} | {tool} | {i['wall']:.1f} | {i['cpu']:.1f} | {i['maxrss_kib'] / 1024:.0f} | "
                f"{unit} | {c['wall'] if c else float('nan'):.2f} | {w['wall'] if w else float('nan'):.2f} | "
                f"{max(c['maxrss_kib'], w['maxrss_kib']) / 1024 if c and w else float('nan'):.0f} | "
                f"{min(loads):.1f}-{max(loads):.1f} |"
            )
    for row in rows:
        if row["kind"] == "files" and row["value"] == 1_000_000:
            c, r = row["tools"].get("cairn", {}), row["tools"].get("restic", {})
            if "initial" in c:
                peak = max(s["maxrss_kib"] for k, s in c.items() if k != "error") / 1024
                md.append("")
                md.append(
                    f"(b) 1,000,000 files: cairn peak RSS {peak:.0f} MiB (target < 1024: "
                    f"{'pass' if peak < 1024 else '**FAIL**'})."
                )
                if "nochange_cold" in r:
                    for k in ("nochange_cold", "nochange_warm"):
                        sp = r[k]["wall"] / c[k]["wall"]
                        md.append(
                            f"No-change backup ({k[9:]}): restic {r[k]['wall']:.1f} s / cairn "
                            f"{c[k]['wall']:.1f} s = {sp:.2f}x (target >= 2: {'pass' if sp >= 2 else '**FAIL**'})."
                        )
    return md


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--files", default="10000,100000,1000000")
    p.add_argument("--gib", default="1,2,4")
    p.add_argument("--tools", default="cairn,restic")
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "work"))
    p.add_argument("--timeout", type=float, default=3600, help="per command, seconds")
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / "scale-commands.log"
    code = freeze_cairn(workdir)
    log(
        f"cairn frozen at {code['path']} ({code['git_head']}, {code['git_dirty']} uncommitted files)"
    )
    tools = [Tool(t, workdir, code["path"]) for t in args.tools.split(",")]
    out_path = workdir / "scale-growth.json"
    sizes = [("files", int(v)) for v in args.files.split(",") if v] + [
        ("gib", int(v)) for v in args.gib.split(",") if v
    ]
    rows: list[dict[str, Any]] = []
    for kind, value in sizes:
        root = ensure(workdir, kind, value)
        files, size = datasets.tree_bytes(root)
        name = f"{value:,} files" if kind == "files" else f"{value} GiB"
        log(f"{name}: {files} files, {size / 2**30:.2f} GiB")
        row: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "value": value,
            "files": files,
            "bytes": size,
            "tools": {},
        }
        for tool in tools:
            row["tools"][tool.name] = measure_tool(
                tool, root, workdir / "repos" / f"scale-{tool.name}", logfile, args.timeout
            )
        row["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        rows.append(row)
        md = markdown(rows)
        md.insert(
            2,
            f"cairn code: frozen copy {code['src_sha256']} of `{code['git_head']}` + {code['git_dirty']} uncommitted files.\n",
        )
        out_path.write_text(json.dumps({"rows": rows, "code": code, "markdown": md}, indent=1))
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
