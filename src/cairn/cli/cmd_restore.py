"""``restore`` and ``check``: getting data back, and proving that it can come back."""

from __future__ import annotations

import click

from cairn.cli.context import GlobalOptions
from cairn.cli.output import human_duration, human_size, print_json
from cairn.ops.restore import restore

pass_globals = click.make_pass_decorator(GlobalOptions)


@click.command(name="restore")
@click.argument("snapshot")
@click.option("-t", "--target", required=True, metavar="DIR", help="Directory to restore into.")
@click.option("-i", "--include", multiple=True, metavar="PATTERN", help="Restore only matching paths (repeatable).")
@click.option("-e", "--exclude", multiple=True, metavar="PATTERN", help="Do not restore matching paths (repeatable).")
@click.option("--verify", is_flag=True, help="Re-read every restored file and compare it with the snapshot.")
@click.option("--sparse/--no-sparse", default=True, show_default=True, help="Leave runs of zeros as holes.")
@click.option("-H", "--host", "hosts", multiple=True, metavar="HOST", help="With 'latest': only this host.")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="With 'latest': only these tags.")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="With 'latest': only these paths.")
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
    )
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


COMMANDS = [restore_cmd]
