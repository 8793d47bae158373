"""Command-line entry point: parses options and calls library functions, nothing more."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="ipmix")
def main() -> None:
    """ipmix: fractal mixing sets and pre-materialised IPMix augmentation."""
