"""``python -m ipmix_cli`` runs the CLI (used by tests that need a real child process)."""

from ipmix_cli.cli import run

run()
