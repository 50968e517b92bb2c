"""`python -m agent.ready URL [--contains TEXT] [--timeout S]`: wait until URL answers 200.

The systemd units run it as `ExecStartPost`, so that `systemctl restart` (and
the Ansible handler that restarts one node at a time) returns only once the
daemon is back in service: the proxy's `/healthz` live, the agent's metrics
saying its proxy is live. Exit 0 when it is, 1 (with one line) when the time
ran out.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

import click


def answers(url: str, contains: str | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            body = response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return False
    return contains is None or contains in body


@click.command()
@click.argument("url")
@click.option("--contains", default=None, help="Text the answer must contain.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait at most.")
def main(url: str, contains: str | None, timeout: float) -> None:
    """Wait until URL answers 200 (and contains TEXT)."""
    deadline = time.monotonic() + timeout
    while not answers(url, contains):
        if time.monotonic() >= deadline:
            what = f" with {contains!r}" if contains else ""
            click.echo(f"{url} did not answer 200{what} within {timeout:g} s", err=True)
            sys.exit(1)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
