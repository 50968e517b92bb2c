"""Which backend serves a request: host first (exact, then `*.suffix`, then any), then the
longest path prefix among that host's routes (pure).

Like NGINX picks a server block by name and then a location, except that a host
whose routes match none of the path falls through to the less specific hosts.
Prefixes are plain string prefixes of the request target ("/api" also matches
"/api2"; write "/api/" to mean the directory).
"""

from __future__ import annotations

from collections.abc import Sequence

from haproxy_py.proxy.config import RouteConfig

_Table = list[tuple[bytes, RouteConfig]]  # (path prefix, route), longest prefix first


def _by_prefix(routes: Sequence[RouteConfig]) -> _Table:
    table = [(r.path_prefix.encode(), r) for r in routes]
    table.sort(key=lambda item: len(item[0]), reverse=True)
    return table


class Router:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._exact: dict[str, _Table] = {}
        suffixes: dict[str, list[RouteConfig]] = {}
        for host in {r.host for r in routes if r.host is not None}:
            same = [r for r in routes if r.host == host]
            if host.startswith("."):
                suffixes[host] = same
            else:
                self._exact[host] = _by_prefix(same)
        self._suffixes = [
            (suffix, _by_prefix(same))
            for suffix, same in sorted(suffixes.items(), key=lambda i: len(i[0]), reverse=True)
        ]
        self._any = _by_prefix([r for r in routes if r.host is None])

    def match(self, host: str | None, target: bytes) -> str | None:
        """The backend name for a routing host (lower case, no port) and request target."""
        route = self.route(host, target)
        return None if route is None else route.backend

    def route(self, host: str | None, target: bytes) -> RouteConfig | None:
        """The route for a routing host (lower case, no port) and request target."""
        if host is not None:
            table = self._exact.get(host)
            if table is not None:
                route = _first(table, target)
                if route is not None:
                    return route
            for suffix, table in self._suffixes:
                if host.endswith(suffix):
                    route = _first(table, target)
                    if route is not None:
                        return route
        return _first(self._any, target)


def _first(table: _Table, target: bytes) -> RouteConfig | None:
    for prefix, route in table:
        if target.startswith(prefix):
            return route
    return None
