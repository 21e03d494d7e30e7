"""``snapshots``, ``ls`` and ``cat``: looking into a repository."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from cairn.cli.context import GlobalOptions
from cairn.cli.output import local_time, mode_string, print_json, table, write_bytes
from cairn.ops.browse import (
    CAT_KINDS,
    cat,
    keep_latest,
    list_nodes,
    load_snapshots,
    snapshot_json,
)
from cairn.repo.gojson import format_time
from cairn.repo.node import Node
from cairn.repo.repository import Repository

pass_globals = click.make_pass_decorator(GlobalOptions)

filter_options = [
    click.option(
        "-H",
        "--host",
        "hosts",
        multiple=True,
        metavar="HOST",
        help="Only snapshots of this host (repeatable).",
    ),
    click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="TAG[,TAG]",
        help="Only snapshots with these tags (repeatable).",
    ),
    click.option(
        "--path",
        "paths",
        multiple=True,
        metavar="PATH",
        help="Only snapshots including this path (repeatable).",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def with_filters(f: F) -> F:
    """The snapshot filter options shared by several commands."""
    for opt in reversed(filter_options):
        f = opt(f)
    return f


@contextlib.contextmanager
def read_lock(g: GlobalOptions, repo: Repository) -> Iterator[None]:
    """A shared lock for reading commands, unless --no-lock."""
    if g.no_lock:
        yield
        return
    with repo.lock(exclusive=False):
        yield


@click.command()
@click.argument("ids", nargs=-1)
@with_filters
@click.option(
    "--latest",
    type=click.IntRange(1),
    metavar="N",
    help="Only the newest N snapshots of each host and path set.",
)
@pass_globals
def snapshots(
    g: GlobalOptions,
    ids: tuple[str, ...],
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
    latest: int | None,
) -> None:
    """List snapshots."""
    repo = g.open_repository()
    with read_lock(g, repo):
        snaps = load_snapshots(repo, hosts=hosts, paths=paths, tags=tags, ids=ids)
    if latest:
        snaps = keep_latest(snaps, latest)
    if g.json:
        click.echo(json.dumps([snapshot_json(sid, s) for sid, s in snaps], ensure_ascii=False))
        return
    rows = [
        [
            sid[:8],
            local_time(s.time),
            s.hostname,
            ",".join(s.tags),
            "\n".join(s.paths) if len(s.paths) == 1 else ", ".join(s.paths),
        ]
        for sid, s in snaps
    ]
    click.echo(table(["ID", "Time", "Host", "Tags", "Paths"], rows))
    click.echo(f"{len(snaps)} snapshots")


def _node_json(path: bytes, node: Node) -> dict[str, object]:
    """restic's ``ls --json`` node line."""
    doc: dict[str, object] = {
        # Go's encoder writes each byte that is not valid UTF-8 as U+FFFD, as restic does.
        "name": node.name.decode("utf-8", "replace"),
        "type": node.type,
        "path": path.decode("utf-8", "replace"),
        "uid": node.uid,
        "gid": node.gid,
    }
    if node.type == "file":
        doc["size"] = node.size
    doc.update(
        {
            "mode": node.mode,
            "permissions": mode_string(node.mode),
            "mtime": format_time(node.mtime),
            "atime": format_time(node.atime),
            "ctime": format_time(node.ctime),
            "struct_type": "node",
        }
    )
    return doc


@click.command()
@click.argument("snapshot_id")
@click.argument("dirs", nargs=-1)
@with_filters
@click.option("-l", "--long", "long_", is_flag=True, help="Long listing: mode, owner, size, time.")
@click.option("--recursive", is_flag=True, help="With directories given, list below them too.")
@pass_globals
def ls(
    g: GlobalOptions,
    snapshot_id: str,
    dirs: tuple[str, ...],
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
    long_: bool,
    recursive: bool,
) -> None:
    """List files in a snapshot (all of them, or those in DIRS)."""
    repo = g.open_repository()
    with read_lock(g, repo):
        repo.load_index()
        sid, snap = repo.find_snapshot(snapshot_id, hosts=hosts, paths=paths, tags=tags)
        if g.json:
            head = snapshot_json(sid, snap)
            head["struct_type"] = "snapshot"
            print_json(head)
        else:
            click.echo(
                f"snapshot {sid[:8]} of [{' '.join(snap.paths)}] filtered by "
                f"[{' '.join(dirs)}] at {local_time(snap.time, '%Y-%m-%d %H:%M:%S %z')}):",
                err=False,
            )
        for entry in list_nodes(repo, snap, dirs, recursive=recursive):
            if g.json:
                print_json(_node_json(entry.path, entry.node))
            elif long_:
                n = entry.node
                line = (
                    f"{mode_string(n.mode):>10} {n.uid:5d} {n.gid:5d} {n.size:6d} "
                    f"{local_time(n.mtime)} ".encode()
                    + entry.path
                )
                if n.type == "symlink":
                    line += b" -> " + n.linktarget
                write_bytes(line + b"\n")
            else:
                write_bytes(entry.path + b"\n")


@click.command(name="cat")
@click.argument("kind", type=click.Choice(CAT_KINDS))
@click.argument("object_id", required=False)
@pass_globals
def cat_cmd(g: GlobalOptions, kind: str, object_id: str | None) -> None:
    """Print a repository object (decrypted): config, masterkey, key, snapshot, index,
    lock, tree, blob or pack."""
    repo = g.open_repository()
    with read_lock(g, repo):
        if kind in ("tree", "blob"):
            repo.load_index()
        write_bytes(cat(repo, kind, object_id))


COMMANDS = [snapshots, ls, cat_cmd]
