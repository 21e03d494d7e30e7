"""``python -m cairn`` runs the command line."""

from cairn.cli.main import main

main()
