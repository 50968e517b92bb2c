"""hactl's expected failures and their exit codes (documented in docs/hactl.md).

    HactlError (click.ClickException)      one line on stderr, never a traceback
    ├── Refused          exit 1  the controller refused a request (or the operator declined)
    ├── ConfigProblem    exit 3  bad option, config/context file or certificate file
    ├── Unreachable      exit 4  etcd unreachable, or the TLS handshake failed
    ├── NoLeader         exit 5  no controller holds the leadership
    ├── TimedOut         exit 6  no result from the controller within --timeout
    └── NotFound         exit 7  unknown node or VIP (the message lists the known ones)

Exit code 2 stays click's usage error (unknown option, bad value).
"""

from __future__ import annotations

from typing import IO, Any

import click

from haproxy_py.hactl.table import printable

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNREACHABLE = 4
EXIT_NO_LEADER = 5
EXIT_TIMEOUT = 6
EXIT_NOT_FOUND = 7


class HactlError(click.ClickException):
    """An expected failure: printed as `hactl: <message>` and exited with `exit_code`."""

    exit_code = EXIT_REFUSED

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"hactl: {printable(self.format_message(), lines=True)}", file=file, err=True)


class Refused(HactlError):
    exit_code = EXIT_REFUSED


class ConfigProblem(HactlError):
    exit_code = EXIT_CONFIG


class Unreachable(HactlError):
    exit_code = EXIT_UNREACHABLE


class NoLeader(HactlError):
    exit_code = EXIT_NO_LEADER


class TimedOut(HactlError):
    exit_code = EXIT_TIMEOUT


class NotFound(HactlError):
    exit_code = EXIT_NOT_FOUND
