"""WebSocket conformance through the proxy: Autobahn|Testsuite's cases, driven by kosoku.

kosoku (PyPI) runs the Autobahn fuzzing-client cases from a native runner;
Autobahn's own `wstest` is Python 2 code and cannot run on Python 3.11. The
cases run twice against the same conformant echo backend (the `websockets`
library): directly, then through an in-process proxy node. The proxy relays
bytes after the 101, so it must not turn a case the backend passes into a
failure; anything else is a regression and the run exits 1.

    .venv/bin/python -m tests.conformance.run                 # the whole suite
    .venv/bin/python -m tests.conformance.run -i '1.*' -i '7.*' --json out.json

`make conformance` runs the whole suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import kosoku
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from haproxy_py.configfile import Table
from haproxy_py.logging import configure as configure_logging
from haproxy_py.proxy.config import parse_proxy
from haproxy_py.proxy.server import ProxyServer

# The verdicts Autobahn counts as passing (NON-STRICT and INFORMATIONAL are conformant).
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})


@dataclass(frozen=True)
class Verdict:
    case: str
    behavior: str
    close: str
    passed: bool


@dataclass
class Run:
    target: str
    seconds: float
    verdicts: list[Verdict]

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(v.behavior for v in self.verdicts))

    @property
    def failed(self) -> list[str]:
        return [v.case for v in self.verdicts if not v.passed]


@dataclass
class Report:
    direct: Run
    proxied: Run
    regressions: list[str] = field(default_factory=list)
    # Same pass/fail, different verdict (e.g. OK -> NON-STRICT): reported, not failed.
    changed: list[str] = field(default_factory=list)


def compare(direct: Run, proxied: Run) -> Report:
    """Which cases the proxy failed although the backend passed them directly."""
    through = {v.case: v for v in proxied.verdicts}
    report = Report(direct, proxied)
    for verdict in direct.verdicts:
        other = through.get(verdict.case)
        if other is None or (verdict.passed and not other.passed):
            report.regressions.append(verdict.case)
        elif (verdict.behavior, verdict.close) != (other.behavior, other.close):
            report.changed.append(verdict.case)
    return report


async def _echo(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            await connection.send(message)


@contextlib.asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    """A conformant WebSocket echo server on a free loopback port (permessage-deflate offered)."""
    async with serve(_echo, "127.0.0.1", 0, max_size=None, ping_interval=None) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@contextlib.asynccontextmanager
async def proxy_in_front(backend_port: int) -> AsyncIterator[int]:
    """An in-process proxy node whose only route leads to the backend; yields its port."""
    doc = Table(
        {
            "admin": {"bind": "127.0.0.1:0"},
            "proxy": {"access_log": False},
            "listeners": [{"name": "ws", "bind": "127.0.0.1:0"}],
            "routes": [{"path_prefix": "/", "backend": "echo"}],
            "backends": {"echo": {"servers": [f"127.0.0.1:{backend_port}"]}},
        },
        "conformance",
        "",
    )
    server = ProxyServer(parse_proxy(doc), node_name="conformance")
    await server.start()
    try:
        yield server.address("ws")[1]
    finally:
        await server.stop()


async def run_cases(
    target: str,
    port: int,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    parallelism: int,
) -> Run:
    started = time.monotonic()
    try:
        results = await kosoku.run_fuzzingclient(
            f"ws://127.0.0.1:{port}", include, exclude, concurrency=parallelism
        )
    except kosoku.FailureError as failure:
        # Raised whenever a case did not pass (12.x/13.x do not when compression is off):
        # the results are still all there.
        results = failure.results
    verdicts = [
        Verdict(r.case_id, r.behavior.value, r.behavior_close.value, bool(r.passed))
        for r in results
    ]
    return Run(target, round(time.monotonic() - started, 1), verdicts)


async def conformance(
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    parallelism: int = 4,
) -> Report:
    """Run the cases directly against the echo backend, then through the proxy, and compare."""
    async with echo_backend() as backend_port:
        direct = await run_cases("direct", backend_port, include, exclude, parallelism)
        async with proxy_in_front(backend_port) as proxy_port:
            proxied = await run_cases("proxy", proxy_port, include, exclude, parallelism)
    return compare(direct, proxied)


def format_report(report: Report) -> str:
    kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
    lines = [f"{'target':<8} {'cases':>5} " + " ".join(f"{k:>13}" for k in kinds) + "  seconds"]
    for run in (report.direct, report.proxied):
        counts = run.counts()
        cells = " ".join(f"{counts.get(k, 0):>13}" for k in kinds)
        lines.append(f"{run.target:<8} {len(run.verdicts):>5} {cells}  {run.seconds:>7}")
    lines.append(f"not passed directly: {', '.join(report.direct.failed) or 'none'}")
    lines.append(f"changed verdict through the proxy: {', '.join(report.changed) or 'none'}")
    lines.append(
        "regressions (passed directly, not through the proxy): "
        + (", ".join(report.regressions) or "none")
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "-i", "--include", action="append", metavar="CASE", help="case id or glob (repeatable)"
    )
    parser.add_argument(
        "-x", "--exclude", action="append", metavar="CASE", help="case id or glob to skip"
    )
    parser.add_argument(
        "-p", "--parallelism", type=int, default=4, help="cases run at once (default 4)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the full verdicts as JSON")
    args = parser.parse_args(argv)
    configure_logging("warning")  # a line per session would bury the table
    report = asyncio.run(conformance(args.include, args.exclude, args.parallelism))
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    return 1 if report.regressions else 0


if __name__ == "__main__":
    sys.exit(main())
