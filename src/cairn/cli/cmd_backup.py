"""``cairn backup``."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import click

from cairn.archiver.archiver import Progress
from cairn.archiver.prefetch import MetadataPrefetch
from cairn.archiver.select import ExcludeOptions, parse_size
from cairn.cli.context import GlobalOptions
from cairn.cli.output import human_duration, human_size, print_json
from cairn.cli.progress import Sampler, Snapshot, Ticker
from cairn.errors import PartialBackupError, UsageError
from cairn.ops.backup import (
    BackupOptions,
    BackupResult,
    backup,
    backup_stdin,
    start_prefetch,
)
from cairn.repo.gojson import parse_time

pass_globals = click.make_pass_decorator(GlobalOptions)


def _files_from(paths: tuple[str, ...]) -> list[str]:
    """Targets listed in files: one per line; blank lines and # comments skipped."""
    out = []
    for p in paths:
        try:
            stream = sys.stdin if p == "-" else open(p, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError as e:
            raise UsageError(f"cannot read --files-from {p}: {e.strerror}") from e
        with stream:
            for line in stream:
                line = line.rstrip("\r\n")
                if line.strip() and not line.lstrip().startswith("#"):
                    out.append(line)
    return out


def _file_reporter(g: GlobalOptions) -> Callable[[str, bytes], None] | None:
    """restic's -v: new and modified files; -vv: unchanged ones too."""
    if g.verbose < 1 or g.quiet:
        return None
    wanted = {"new", "modified"} | ({"unchanged"} if g.verbose >= 2 else set())
    lock = threading.Lock()

    def report(action: str, path: bytes) -> None:
        if action not in wanted:
            return
        with lock:  # called from reader threads
            if g.json:
                item = path.decode("utf-8", "replace")
                print_json({"message_type": "verbose_status", "action": action, "item": item})
            else:
                sys.stdout.flush()
                sys.stdout.buffer.write(f"{action:<10} ".encode() + path + b"\n")
                sys.stdout.buffer.flush()

    return report


def _sampler(progress: Progress) -> Sampler:
    def sample() -> Snapshot:
        totals = progress.totals()
        return Snapshot(
            files_done=progress.files_done,
            bytes_done=progress.bytes_done,
            files_total=totals[0] if totals else None,
            bytes_total=totals[1] if totals else None,
            current=progress.current,
        )

    return sample


@click.command(name="backup")
@click.argument("paths", nargs=-1)
@click.option(
    "-e", "--exclude", multiple=True, metavar="PATTERN", help="Exclude a pattern (repeatable)."
)
@click.option("--iexclude", multiple=True, metavar="PATTERN", help="Like --exclude, ignoring case.")
@click.option(
    "--exclude-file", multiple=True, metavar="FILE", help="Read exclude patterns from FILE."
)
@click.option(
    "--iexclude-file", multiple=True, metavar="FILE", help="Like --exclude-file, ignoring case."
)
@click.option(
    "--exclude-caches", is_flag=True, help="Exclude directories holding a valid CACHEDIR.TAG."
)
@click.option(
    "--exclude-if-present",
    multiple=True,
    metavar="FILE[:HEADER]",
    help="Exclude directories containing FILE.",
)
@click.option(
    "--exclude-larger-than", metavar="SIZE", help="Exclude files larger than SIZE (e.g. 1G)."
)
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross file system boundaries.")
@click.option(
    "--files-from", multiple=True, metavar="FILE", help="Read the paths to back up from FILE."
)
@click.option("--tag", multiple=True, metavar="TAG[,TAG]", help="Tags for the new snapshot.")
@click.option("-H", "--host", metavar="NAME", help="Host name to record (default: this machine's).")
@click.option(
    "--parent", metavar="SNAPSHOT", help="Compare against this snapshot instead of the latest."
)
@click.option("-f", "--force", is_flag=True, help="Re-read every file (a full backup).")
@click.option(
    "-n", "--dry-run", is_flag=True, help="Do everything except writing to the repository."
)
@click.option("--stdin", "use_stdin", is_flag=True, help="Back up what arrives on standard input.")
@click.option("--stdin-filename", default="stdin", show_default=True, help="File name for --stdin.")
@click.option(
    "--compression",
    type=click.Choice(["auto", "off", "max", "fastest", "better"]),
    default=None,
    help="Compression mode (default auto).",
)
@click.option("--time", "time_", metavar="TIME", help="Snapshot time (RFC 3339), default now.")
@click.option(
    "--read-concurrency",
    type=click.IntRange(1, 64),
    default=None,
    help="Files of 1 MiB or more read in parallel (default: one per two cores).",
)
@pass_globals
def backup_cmd(
    g: GlobalOptions,
    paths: tuple[str, ...],
    exclude: tuple[str, ...],
    iexclude: tuple[str, ...],
    exclude_file: tuple[str, ...],
    iexclude_file: tuple[str, ...],
    exclude_caches: bool,
    exclude_if_present: tuple[str, ...],
    exclude_larger_than: str | None,
    one_file_system: bool,
    files_from: tuple[str, ...],
    tag: tuple[str, ...],
    host: str | None,
    parent: str | None,
    force: bool,
    dry_run: bool,
    use_stdin: bool,
    stdin_filename: str,
    compression: str | None,
    time_: str | None,
    read_concurrency: int | None,
) -> None:
    """Create a snapshot of PATHS (files and directories).

    Every snapshot is complete. Files unchanged since the parent snapshot (same size,
    mtime, ctime and inode) are not read again; --force reads everything.
    """
    targets = list(paths) + _files_from(files_from)
    if use_stdin and targets:
        raise UsageError("--stdin cannot be combined with paths")
    if not use_stdin and not targets:
        raise UsageError("nothing to back up: give at least one path, --files-from or --stdin")
    tags = [t for entry in tag for t in entry.split(",") if t]
    opts = BackupOptions(
        tags=tags,
        host=host,
        parent=parent,
        force=force,
        dry_run=dry_run,
        time=parse_time(time_) if time_ else None,
        read_concurrency=read_concurrency,
        excludes=ExcludeOptions(
            exclude=list(exclude),
            iexclude=list(iexclude),
            exclude_file=list(exclude_file),
            iexclude_file=list(iexclude_file),
            exclude_caches=exclude_caches,
            exclude_if_present=list(exclude_if_present),
            exclude_larger_than=parse_size(exclude_larger_than) if exclude_larger_than else None,
            one_file_system=one_file_system,
        ),
    )
    # Directories are listed (in parallel on a cold cache) while the key is derived.
    prefetch = None if use_stdin else start_prefetch(targets, opts)
    try:
        result = _run_backup(g, targets, opts, compression, use_stdin, stdin_filename, prefetch)
    finally:
        if prefetch is not None:
            prefetch.stop()
    _report(g, result)
    if result.incomplete:
        raise PartialBackupError(
            f"snapshot {result.snapshot_id[:8] if result.snapshot_id else '(dry run)'} saved, "
            f"but {len(result.stats.errors)} file(s) could not be read"
        )


def _run_backup(
    g: GlobalOptions,
    targets: list[str],
    opts: BackupOptions,
    compression: str | None,
    use_stdin: bool,
    stdin_filename: str,
    prefetch: MetadataPrefetch | None,
) -> BackupResult:
    repo = g.open_repository()
    if compression:
        repo.compression = compression

    def warn(msg: str) -> None:
        if g.json:
            print_json({"message_type": "error", "error": {"message": msg}, "during": "archival"})
        else:
            click.echo(f"error: {msg}", err=True)

    if use_stdin:
        result = backup_stdin(repo, sys.stdin.buffer, stdin_filename, opts, lock=not g.no_lock)
    else:
        progress = Progress()
        ticker = Ticker.for_output(_sampler(progress), json=g.json, quiet=g.quiet)
        with ticker:
            result = backup(
                repo,
                targets,
                opts,
                warn=warn,
                progress=progress,
                lock=not g.no_lock,
                scan=ticker.enabled,
                on_file=_file_reporter(g),
                report_unchanged=g.verbose >= 2,
                prefetch=prefetch,
            )
    return result


def _report(g: GlobalOptions, r: BackupResult) -> None:
    if g.json:
        print_json(r.summary())
        return
    if g.quiet:
        return
    s = r.stats
    echo = click.echo
    if r.parent_id:
        echo(f"using parent snapshot {r.parent_id[:8]} (incremental backup)")
    else:
        echo("no parent snapshot: every file was read (full backup)")
    echo("")
    echo(
        f"Files:       {s.files_new:5d} new, {s.files_changed:5d} changed, {s.files_unmodified:5d} unmodified"
    )
    echo(
        f"Dirs:        {s.dirs_new:5d} new, {s.dirs_changed:5d} changed, {s.dirs_unmodified:5d} unmodified"
    )
    echo(
        f"Added to the repository: {human_size(s.data_added)} "
        f"({human_size(s.data_added_packed)} stored)"
    )
    echo("")
    echo(
        f"processed {s.total_files_processed} files, {human_size(s.total_bytes_processed)} "
        f"(read {human_size(s.bytes_read)}) in {human_duration(r.duration)}"
    )
    if r.dry_run:
        echo("dry run: nothing was written")
    elif r.snapshot_id:
        echo(f"snapshot {r.snapshot_id[:8]} saved")


COMMANDS = [backup_cmd]
