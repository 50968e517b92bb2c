"""Prometheus text exposition from plain counters, for the proxy, the agent and the controller.

Hot paths only bump ints in a dict; the text is rendered when `/metrics` is
scraped. Gauges that are cheaper to compute at scrape time register a
callback instead of being kept up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

Labels = tuple[tuple[str, str], ...]
Sample = tuple[dict[str, str], float]


@dataclass
class Family:
    """One metric name with its samples, keyed by label values."""

    name: str
    help: str
    kind: str  # "counter" or "gauge"
    values: dict[Labels, float] = field(default_factory=dict)
    collect: Callable[[], Iterable[Sample]] | None = None

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def samples(self) -> Iterable[tuple[Labels, float]]:
        if self.collect is not None:
            return [(tuple(sorted(labels.items())), value) for labels, value in self.collect()]
        return self.values.items()


class Registry:
    """The metric families of one process, rendered in Prometheus text format 0.0.4."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.families: dict[str, Family] = {}

    def _add(self, family: Family) -> Family:
        if family.name in self.families:
            raise ValueError(f"metric {family.name} registered twice")
        self.families[family.name] = family
        return family

    def counter(self, name: str, help: str) -> Family:
        return self._add(Family(f"{self.prefix}_{name}", help, "counter"))

    def gauge(
        self, name: str, help: str, collect: Callable[[], Iterable[Sample]] | None = None
    ) -> Family:
        return self._add(Family(f"{self.prefix}_{name}", help, "gauge", collect=collect))

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families.values():
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for labels, value in family.samples():
                lines.append(f"{family.name}{_format_labels(labels)} {_format_value(value)}")
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _escape(value: str) -> str:
    """Label values escape backslash, double quote and newline (text format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


async def serve(registry: Registry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `/metrics` on host:port (0 picks a free port); returns the runner and bound port."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=registry.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()  # the caller reports the port; nothing is left half-open
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
