"""`hactl lab ...`: bring the one-machine lab up and down, and inject faults."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """The whole cluster in network namespaces on this machine (root)."""
