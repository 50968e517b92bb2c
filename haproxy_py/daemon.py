"""The command-line convention of the three daemons: haproxy-py run, ha-agent, ha-controller.

    --config FILE, -c FILE   the node's TOML file (required)
    --check-config           check every section the daemon reads, print "FILE: ok", exit 0
    exit 2                   the config file is unusable: one line naming the file and the key
    exit 1                   the daemon could not start: one line saying what and why
    exit 0                   stopped by SIGTERM or SIGINT

All three take their logging from `[logging]` (`level`, `format`); a level
given on the command line wins. Each logs the same three lines, with
`daemon=<name>`: `starting` (version, config file), `ready` once it does its
job - the proxy listens, the agent is registered, the controller has reached
etcd - which is also when systemd is sent READY=1, and `stopped` on a clean
exit. Expected failures never print a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import structlog

from haproxy_py import __version__, configfile, systemd
from haproxy_py import logging as hlogging
from haproxy_py.cluster.config import LoggingConfig, parse_logging
from haproxy_py.configfile import ConfigError, Table

log = structlog.get_logger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
EXIT_START_FAILED = 1
EXIT_CONFIG = 2


class Fatal(Exception):
    """An expected start failure; the message is the whole story for the operator."""


def config_option(sections: str) -> Callable[[F], F]:
    """`--config FILE` / `-c FILE`; `sections` names what the daemon reads, for --help."""
    return click.option(
        "--config",
        "-c",
        "config",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"The node's TOML config file ({sections}).",
    )


def check_config_option(f: F) -> F:
    return click.option(
        "--check-config",
        is_flag=True,
        help="Only check the config file: exit 0 when usable, 2 with the problem.",
    )(f)


def load(name: str, path: Path, parse: Callable[[Table], T]) -> tuple[T, LoggingConfig]:
    """The daemon's sections (`parse`) and `[logging]` from `path`; exit 2 when unusable."""
    try:
        doc = configfile.load(path)
        return parse(doc), parse_logging(doc)
    except ConfigError as exc:
        fail(name, str(exc), EXIT_CONFIG)


def fail(name: str, message: str, code: int = EXIT_START_FAILED) -> NoReturn:
    click.echo(f"{name}: {message}", err=True)
    sys.exit(code)


def checked(path: Path) -> None:
    """What --check-config prints when the file is usable."""
    click.echo(f"{path}: ok")


def start_logging(config: LoggingConfig, level: str | None = None) -> None:
    """Logging as `[logging]` says; `level` (from the command line) overrides its level."""
    hlogging.configure(level or config.level, config.json)


def run(
    name: str,
    path: Path,
    main: Coroutine[Any, Any, None],
    start_errors: tuple[type[OSError], ...] = (),
) -> None:
    """Run the daemon's `main` to its end: `Fatal` (and `start_errors`) exit 1 in one line."""
    log.info("starting", daemon=name, version=__version__, config=str(path))
    try:
        asyncio.run(main)
    except Fatal as exc:
        fail(name, str(exc))
    except start_errors as exc:
        fail(name, f"{path}: cannot start: {exc.strerror or exc}")
    log.info("stopped", daemon=name)


def ready(name: str, is_ready: Callable[[], bool]) -> None:
    """Log `ready` once `is_ready()` holds, and tell systemd (READY=1, then the watchdog).

    Call it from inside the daemon's event loop; the watch ends with the loop.
    """
    systemd.start(is_ready, lambda: log.info("ready", daemon=name))
