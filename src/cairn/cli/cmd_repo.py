"""Commands about the repository itself: init, key, unlock, check, version."""

from __future__ import annotations

import platform
import sys

import click

from cairn import __version__
from cairn.cli.context import GlobalOptions, ask_new_password, read_password_file
from cairn.cli.output import print_json, table
from cairn.errors import AppendOnlyError, UsageError
from cairn.repo.keys import list_keys
from cairn.repo.repository import Repository

pass_globals = click.make_pass_decorator(GlobalOptions)


def info(g: GlobalOptions, message: str) -> None:
    """Progress and status text: stderr, so that stdout stays clean for results."""
    if not g.quiet and not g.json:
        click.echo(message, err=True)


@click.command()
@click.option(
    "--repository-version",
    default="stable",
    show_default=True,
    metavar="1|2|stable|latest",
    help="Format version to create (2 compresses; 1 for restic <= 0.13).",
)
@pass_globals
def init(g: GlobalOptions, repository_version: str) -> None:
    """Create a new repository."""
    versions = {"1": 1, "2": 2, "stable": 2, "latest": 2}
    if repository_version not in versions:
        raise UsageError(f"unsupported --repository-version {repository_version!r}")
    backend = g.backend()
    password = g.new_password()
    repo = Repository.init(backend, password, version=versions[repository_version])
    if g.json:
        print_json(
            {"message_type": "initialized", "id": repo.config.id, "repository": backend.location}
        )
    else:
        click.echo(f"created cairn repository {repo.config.id[:10]} at {backend.location}")
        click.echo(
            "\nPlease note that knowledge of your password is required to access\n"
            "the repository. Losing your password means that your data is\n"
            "irrecoverably lost."
        )


@click.command()
@pass_globals
def version(g: GlobalOptions) -> None:
    """Print version information."""
    if g.json:
        print_json(
            {"message_type": "version", "version": __version__, "python": platform.python_version()}
        )
    else:
        click.echo(
            f"cairn {__version__} (Python {platform.python_version()} on {sys.platform}/{platform.machine()})"
        )


@click.group()
def key() -> None:
    """Manage the passwords (key files) of a repository."""


@key.command("list")
@pass_globals
def key_list(g: GlobalOptions) -> None:
    """List key files."""
    repo = g.open_repository()
    keys = list(list_keys(repo.backend))
    if g.json:
        print_json(
            [
                {
                    "current": k.name == repo.key_name,
                    "id": k.name[:8],
                    "userName": k.username,
                    "hostName": k.hostname,
                    "created": k.created,
                }
                for k in keys
            ]
        )
        return
    rows = [
        [
            ("*" if k.name == repo.key_name else " ") + k.name[:8],
            k.username,
            k.hostname,
            k.created[:19].replace("T", " "),
        ]
        for k in keys
    ]
    click.echo(table([" ID", "User", "Host", "Created"], rows))


@key.command("add")
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@pass_globals
def key_add(g: GlobalOptions, new_password_file: str | None) -> None:
    """Add a password that opens the same repository."""
    repo = g.open_repository()
    new = _new_password(g, new_password_file)
    name = repo.add_key(new)
    click.echo(f"saved new key with ID {name}")


@key.command("remove")
@click.argument("key_id")
@pass_globals
def key_remove(g: GlobalOptions, key_id: str) -> None:
    """Remove a key file (not the one in use)."""
    from cairn.backend.base import FileType, Handle

    repo = g.open_repository()
    matches = [k.name for k in list_keys(repo.backend) if k.name.startswith(key_id)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} key matches {key_id!r}")
    if matches[0] == repo.key_name:
        raise UsageError("refusing to remove the key currently in use")
    with repo.lock(exclusive=True):
        repo.backend.remove(Handle(FileType.KEY, matches[0]))
    click.echo(f"removed key {matches[0]}")


@key.command("passwd")
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@pass_globals
def key_passwd(g: GlobalOptions, new_password_file: str | None) -> None:
    """Change the password: add a new key, then remove the one in use."""
    from cairn.backend.base import FileType, Handle

    repo = g.open_repository()
    new = _new_password(g, new_password_file)
    with repo.lock(exclusive=True):
        name = repo.add_key(new)
        if repo.key_name:
            try:
                repo.backend.remove(Handle(FileType.KEY, repo.key_name))
            except AppendOnlyError as e:
                raise AppendOnlyError(
                    f"saved new key {name[:8]}: the new password works, but the server is "
                    f"append-only and kept the old key {repo.key_name[:8]}, so the old "
                    "password still opens the repository too"
                ) from e
    click.echo(f"saved new key as {name}")


def _new_password(g: GlobalOptions, path: str | None) -> str:
    """The new password of ``key add``/``key passwd``: from --new-password-file, else asked
    for (never the current password from the environment)."""
    return read_password_file(path) if path else ask_new_password()


@click.command()
@click.option("--remove-all", is_flag=True, help="Remove all locks, even those still in use.")
@pass_globals
def unlock(g: GlobalOptions, remove_all: bool) -> None:
    """Remove stale locks (left by crashed processes)."""
    repo = g.open_repository()
    removed = repo.unlock(remove_all=remove_all)
    info(g, f"successfully removed {len(removed)} lock(s)" if removed else "no stale locks found")


COMMANDS = [init, version, key, unlock]
