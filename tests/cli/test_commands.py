"""The lazily loaded command table stays in step with the command modules."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click

import cairn.cli
from cairn.cli.main import COMMAND_MODULES, cli


def test_every_command_module_is_in_the_table_and_back() -> None:
    defined: dict[str, str] = {}
    for info in pkgutil.iter_modules(cairn.cli.__path__):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"cairn.cli.{info.name}")
            for command in module.COMMANDS:
                assert command.name is not None
                defined[command.name] = info.name
    assert defined == COMMAND_MODULES
    ctx = click.Context(cli)
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys; from cairn.cli.main import cli; import click; "
        "cli.get_command(click.Context(cli), 'backup'); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('cairn.'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "cairn.cli.cmd_backup" in loaded
    assert not {"cairn.cli.cmd_restore", "cairn.restorer", "cairn.ops.check"} & set(loaded)
