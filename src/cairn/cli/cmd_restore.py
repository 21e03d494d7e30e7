"""``restore`` and ``check``: getting data back, and proving that it can come back."""

from __future__ import annotations

import click

from cairn.cli.context import GlobalOptions
from cairn.cli.output import human_duration, human_size, print_json
from cairn.cli.progress import Snapshot, Ticker
from cairn.ops.check import check
from cairn.ops.restore import RestoreResult, restore
from cairn.restorer.progress import RestoreProgress

pass_globals = click.make_pass_decorator(GlobalOptions)


@click.command(name="restore")
@click.argument("snapshot")
@click.option("-t", "--target", required=True, metavar="DIR", help="Directory to restore into.")
@click.option(
    "-i",
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="Restore only matching paths (repeatable).",
)
@click.option(
    "-e",
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Do not restore matching paths (repeatable).",
)
@click.option(
    "--verify", is_flag=True, help="Re-read every restored file and compare it with the snapshot."
)
@click.option(
    "--sparse/--no-sparse", default=True, show_default=True, help="Leave runs of zeros as holes."
)
@click.option(
    "-H", "--host", "hosts", multiple=True, metavar="HOST", help="With 'latest': only this host."
)
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="With 'latest': only these tags."
)
@click.option(
    "--path", "paths", multiple=True, metavar="PATH", help="With 'latest': only these paths."
)
@pass_globals
def restore_cmd(
    g: GlobalOptions,
    snapshot: str,
    target: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    verify: bool,
    sparse: bool,
    hosts: tuple[str, ...],
    tags: tuple[str, ...],
    paths: tuple[str, ...],
) -> None:
    """Restore SNAPSHOT (an ID, a prefix, or 'latest'; 'ID:sub/dir' for part of it)
    into the target directory."""
    repo = g.open_repository()
    latest: list[RestoreProgress] = []

    def sample() -> Snapshot:
        if not latest:
            return Snapshot(files_done=0, bytes_done=0, phase="planning")
        p = latest[-1]
        return Snapshot(p.files_done, p.bytes_done, p.files_total, p.bytes_total, phase=p.phase)

    def on_progress(p: RestoreProgress) -> None:
        latest[:] = [p]

    with Ticker.for_output(sample, json=g.json, quiet=g.quiet):
        result = restore(
            repo,
            snapshot,
            target,
            include=include,
            exclude=exclude,
            verify=verify,
            sparse=sparse,
            hosts=hosts,
            paths=paths,
            tags=tags,
            lock=not g.no_lock,
            progress=on_progress,
        )
    _report_restore(g, result, verify)


def _report_restore(g: GlobalOptions, result: RestoreResult, verify: bool) -> None:
    for w in result.warnings:
        if g.json:
            print_json({"message_type": "warning", "message": w})
        elif not g.quiet:
            click.echo(f"warning: {w}", err=True)
    for e in result.errors:
        if g.json:
            print_json({"message_type": "error", "error": {"message": e}, "during": "restore"})
        else:
            click.echo(f"error: {e}", err=True)
    if g.json:
        print_json(
            {
                "message_type": "summary",
                "snapshot_id": result.snapshot_id,
                "files_restored": result.files,
                "dirs_restored": result.dirs,
                "other_restored": result.others,
                "bytes_restored": result.bytes_written,
                "files_verified": result.verified_files,
                "errors": len(result.errors),
                "total_duration": round(result.duration, 6),
            }
        )
    elif not g.quiet:
        click.echo(
            f"restored snapshot {result.snapshot_id[:8]} to {result.target}: "
            f"{result.files} files, {result.dirs} dirs, {human_size(result.bytes_written)} "
            f"in {human_duration(result.duration)}"
        )
        if verify:
            click.echo(f"verified {result.verified_files} files")
    result.raise_for_errors()


@click.command(name="check")
@click.option("--read-data", is_flag=True, help="Also read, decrypt and hash every blob.")
@click.option(
    "--read-data-subset",
    metavar="n/t|x%|SIZE",
    help="Read only part of the data: bucket n of t, a percentage, or a size.",
)
@pass_globals
def check_cmd(g: GlobalOptions, read_data: bool, read_data_subset: str | None) -> None:
    """Check the repository: index, packs, snapshots and trees agree; with --read-data every
    blob decrypts and hashes to its ID. Errors name the damaged pack and the snapshots that
    depend on it."""
    # Like restic: check what the repository holds, not what a local cache remembers.
    repo = g.open_repository(cache=False)
    if not g.quiet and not g.json:
        click.echo(
            "checking index, packs, snapshots and trees"
            + (" and reading data" if read_data or read_data_subset else ""),
            err=True,
        )
    result = check(
        repo,
        read_data=read_data or bool(read_data_subset),
        read_data_subset=read_data_subset,
        lock=not g.no_lock,
    )
    if g.json:
        for e in result.errors:
            print_json(
                {
                    "message_type": "error",
                    "kind": e.kind,
                    "message": str(e),
                    "pack": e.pack,
                    "blob": e.blob,
                    "snapshots": e.snapshots,
                }
            )
        print_json(
            {
                "message_type": "summary",
                "errors": len(result.errors),
                "damaged_snapshots": result.damaged_snapshots,
                "orphaned_packs": len(result.orphaned_packs),
                "index_files": result.index_files,
                "packs": result.packs,
                "snapshots": result.snapshots,
                "trees": result.trees,
                "packs_read": result.packs_read,
                "blobs_read": result.blobs_read,
                "bytes_read": result.bytes_read,
            }
        )
    else:
        for e in result.errors:
            click.echo(f"error: {e}")
        if result.orphaned_packs and not g.quiet:
            click.echo(
                f"{len(result.orphaned_packs)} additional packs are in no index (not an error; prune removes them)"
            )
        if not g.quiet:
            click.echo(
                f"{result.snapshots} snapshots, {result.trees} trees, {result.packs} packs"
                + (
                    f"; read {result.packs_read} packs, {result.blobs_read} blobs, {human_size(result.bytes_read)}"
                    if result.packs_read
                    else ""
                )
            )
        if result.damaged_snapshots:
            click.echo("damaged snapshots: " + " ".join(s[:8] for s in result.damaged_snapshots))
        if result.ok:
            click.echo("no errors were found")
    result.raise_for_errors()


COMMANDS = [restore_cmd, check_cmd]
