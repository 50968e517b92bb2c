"""Routes: exact host, then *.suffix, then any host; longest path prefix within a host."""

from __future__ import annotations

from haproxy_py.proxy.config import RouteConfig
from haproxy_py.proxy.routing import Router

ROUTER = Router(
    [
        RouteConfig(None, "/", "default"),
        RouteConfig(None, "/api/", "api"),
        RouteConfig(None, "/api/v2/", "api2"),
        RouteConfig("ws.example.com", "/", "ws"),
        RouteConfig(".example.com", "/", "wild"),
        RouteConfig(".a.example.com", "/", "wild-a"),
        RouteConfig("only.example.org", "/admin", "admin"),
    ]
)


class TestRouter:
    def test_longest_prefix_wins(self) -> None:
        assert ROUTER.match(None, b"/api/v2/x") == "api2"
        assert ROUTER.match(None, b"/api/x?q=1") == "api"
        assert ROUTER.match(None, b"/other") == "default"

    def test_exact_host_before_wildcard(self) -> None:
        assert ROUTER.match("ws.example.com", b"/api/") == "ws"
        assert ROUTER.match("x.example.com", b"/") == "wild"

    def test_longest_wildcard_suffix_first(self) -> None:
        assert ROUTER.match("b.a.example.com", b"/") == "wild-a"

    def test_host_without_matching_path_falls_through(self) -> None:
        """A host whose routes miss the path falls back to host-less routes."""
        assert ROUTER.match("only.example.org", b"/admin/x") == "admin"
        assert ROUTER.match("only.example.org", b"/api/") == "api"

    def test_no_match(self) -> None:
        assert Router([RouteConfig("a.b", "/", "x")]).match("c.d", b"/") is None
