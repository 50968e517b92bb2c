"""The proxy's config sections: `[admin]`, `[proxy]`, `[[listeners]]`, `[[routes]]`, `[backends.*]`.

Parsed once into frozen dataclasses; runtime code never touches the raw TOML.
Defaults suit long-lived WebSockets: idle WebSockets may stay open for an hour,
`least_conn` spreads them, and servers start `up` so that a fresh node serves at
once (active checks take a bad server out within `fall` intervals).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from haproxy_py.configfile import Table
from haproxy_py.proxy.adminauth import AdminAuth, parse_admin_auth
from haproxy_py.proxy.tls import (
    AdminTls,
    BackendTls,
    ListenerTls,
    parse_admin_tls,
    parse_backend_tls,
    parse_listener_tls,
)

BALANCE_ALGORITHMS = ("least_conn", "round_robin", "source_hash", "header_hash")


@dataclass(frozen=True)
class AdminConfig:
    """Loopback, or TLS that requires a client certificate (`tls`): the API can drain the node."""

    host: str
    port: int
    tls: AdminTls | None = None
    auth: AdminAuth = field(default_factory=AdminAuth)  # who may change the node


@dataclass(frozen=True)
class Timeouts:
    """Seconds; 0 disables a timeout. Each guards a place where a peer can stall."""

    connect: float = 5.0
    client_header: float = 30.0
    client_body: float = 60.0  # between two reads of a request body (nginx client_body_timeout)
    upstream_header: float = 60.0  # the backend's response head, re-armed after each 1xx
    upstream_read: float = 60.0  # between two reads of a response body (proxy_read_timeout)
    send: float = 60.0  # a client that stops reading (nginx send_timeout), then abort
    http_idle: float = 75.0
    # An idle pooled upstream connection is not reused after this long: shorter than the
    # common backend keep-alive timeouts (Node 5 s, gunicorn 2 s is the outlier), so the
    # proxy does not race a backend that is closing it.
    upstream_idle: float = 4.0
    websocket_idle: float = 3600.0
    drain: float = 30.0  # how long a drain waits for HTTP and WebSockets to finish


# The timeouts a route may set for itself (the rest are per connection or per node).
ROUTE_TIMEOUTS = (
    *("connect", "upstream_header", "client_body", "upstream_read", "send", "websocket_idle"),
)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 20000
    max_header_size: int = 32768
    max_uri_size: int = 8192
    # Per client address (after PROXY protocol); 0: no limit. Over the limit a
    # connection gets 429 (a WebSocket handshake is refused the same way). These and a
    # listener's max_connections are counted by each worker process on its own.
    per_ip_connections: int = 0  # open at once
    per_ip_rate: float = 0.0  # new connections per second (token bucket)
    per_ip_burst: int = 0  # bucket size; 0: the rate rounded up


@dataclass(frozen=True)
class ProxySectionConfig:
    """The `[proxy]` section: timeouts, limits and logging for every listener."""

    timeouts: Timeouts
    limits: Limits
    access_log: bool = True
    underscores_in_headers: bool = False  # forward header names with `_` (nginx's default off)
    workers: int | None = None  # worker processes; None: "auto", one per CPU we may run on


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    max_connections: int
    tls: ListenerTls | None = None
    # A PROXY v1/v2 header is required first, from `trusted_proxies` only (required:
    # "0.0.0.0/0" is an explicit, warned-about opt-in).
    proxy_protocol: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Clients whose X-Forwarded-For is kept (appended to); everyone else's is replaced by
    # their address: this listener is the edge unless a proxy in front is named here.
    forwarded_for_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    """`host` is None (any), an exact name, or `*.suffix` (kept as `.suffix`).

    `timeouts` are the node's with the route's own `[routes.timeouts]` over them
    (None: the node's, read at each request so a reload applies).
    """

    host: str | None
    path_prefix: str
    backend: str
    max_body_size: int = 0  # bytes of request body; over it 413 (0: no limit)
    timeouts: Timeouts | None = None


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    weight: int = 1
    max_conns: int = 0  # 0: no limit

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HealthConfig:
    """Active checks run when `path` is set; passive ones count transport failures
    (connect refused, reset, timeout), and 5xx answers only with `passive_5xx`."""

    path: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    expect_status: tuple[int, ...] = (200,)
    passive: bool = True
    passive_5xx: bool = False  # opt-in: any client able to cause a 500 could take servers out
    # Without active checks a passively failed server is tried again after this long.
    retry_down_after: float = 10.0


@dataclass(frozen=True)
class HashKey:
    """What `header_hash` hashes: a request header or a cookie."""

    kind: str  # "header" or "cookie"
    name: str  # header names lower-case


@dataclass(frozen=True)
class BackendConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "least_conn"
    hash_key: HashKey | None = None
    retries: int = 2
    health: HealthConfig = HealthConfig()
    tls: BackendTls | None = None
    send_proxy: str | None = None  # "v1" or "v2": a PROXY header first on each connection


@dataclass(frozen=True)
class ProxyConfig:
    admin: AdminConfig
    proxy: ProxySectionConfig
    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    backends: dict[str, BackendConfig]


def parse_address(table: Table, key: str | int, value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the host must be an IP address or a name."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        table.fail(key, f'expected "host:port" (IPv6 as "[addr]:port"), got {value!r}')
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            table.fail(key, f"expected an IPv6 address in brackets, got {value!r}")
    return host, int(port_text)


def _timeouts(proxy: Table) -> Timeouts:
    t = proxy.table("timeouts", {})
    defaults = Timeouts()
    t.reject_unknown(set(Timeouts.__dataclass_fields__))
    return Timeouts(
        **{
            name: t.number(name, getattr(defaults, name), min=0)
            for name in Timeouts.__dataclass_fields__
        }
    )


def _limits(proxy: Table) -> Limits:
    t = proxy.table("limits", {})
    defaults = Limits()
    t.reject_unknown(set(Limits.__dataclass_fields__))
    return Limits(
        max_connections=t.integer("max_connections", defaults.max_connections, min=1),
        max_header_size=t.integer("max_header_size", defaults.max_header_size, min=1024),
        max_uri_size=t.integer("max_uri_size", defaults.max_uri_size, min=256),
        per_ip_connections=t.integer("per_ip_connections", 0, min=0),
        per_ip_rate=t.number("per_ip_rate", 0.0, min=0),
        per_ip_burst=t.integer("per_ip_burst", 0, min=0),
    )


def parse_proxy_section(doc: Table) -> ProxySectionConfig:
    proxy = doc.table("proxy", {})
    proxy.reject_unknown({"timeouts", "limits", "access_log", "underscores_in_headers", "workers"})
    return ProxySectionConfig(
        timeouts=_timeouts(proxy),
        limits=_limits(proxy),
        access_log=proxy.boolean("access_log", True),
        underscores_in_headers=proxy.boolean("underscores_in_headers", False),
        workers=_workers(proxy),
    )


MAX_WORKERS = 256


def _workers(proxy: Table) -> int | None:
    """`workers = "auto"` (None) or a number of worker processes."""
    value = proxy.data.get("workers", "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        proxy.fail(
            "workers", f'expected "auto" or an integer from 1 to {MAX_WORKERS}, got {value!r}'
        )
    return value


def parse_admin(doc: Table) -> AdminConfig:
    admin = doc.table("admin", {})
    admin.reject_unknown({"bind", "tls", "tokens"})
    bind = admin.string("bind", "127.0.0.1:9901")
    host, port = parse_address(admin, "bind", bind)
    tls = parse_admin_tls(admin)
    if tls is None and not is_loopback(host):
        admin.fail(
            "bind",
            f"{bind} is not a loopback address, and whoever reaches the admin API can drain "
            "this node: bind it to 127.0.0.1, or require client certificates with "
            'tls = { cert = "...", key = "...", client_ca = "..." }',
        )
    auth = parse_admin_auth(admin, tls.client_ca if tls else None)
    return AdminConfig(host=host, port=port, tls=tls, auth=auth)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it points may change


def parse_listeners(doc: Table, settings: ProxySectionConfig) -> tuple[ListenerConfig, ...]:
    listeners: list[ListenerConfig] = []
    for item in doc.array("listeners"):
        item.reject_unknown(
            {"name", "bind", "max_connections", "tls", "proxy_protocol", "trusted_proxies"}
            | {"forwarded_for_trusted"}
        )
        name = item.string("name")
        if any(other.name == name for other in listeners):
            item.fail("name", f"duplicate listener name {name!r}")
        host, port = parse_address(item, "bind", item.string("bind"))
        proxy_protocol, trusted = _proxy_protocol(item)
        listeners.append(
            ListenerConfig(
                name=name,
                host=host,
                port=port,
                max_connections=item.integer(
                    "max_connections", settings.limits.max_connections, min=1
                ),
                tls=parse_listener_tls(item),
                proxy_protocol=proxy_protocol,
                trusted_proxies=trusted,
                forwarded_for_trusted=_networks(item, "forwarded_for_trusted"),
            )
        )
    if not listeners:
        doc.fail("listeners", "missing; expected at least one [[listeners]] with name and bind")
    return tuple(listeners)


def _proxy_protocol(
    item: Table,
) -> tuple[bool, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    enabled = item.boolean("proxy_protocol", False)
    networks = _networks(item, "trusted_proxies")
    if networks and not enabled:
        item.fail("trusted_proxies", "only used with proxy_protocol = true")
    if enabled and not networks:
        # A PROXY header sets the client's address: from anyone, it is a spoofing switch.
        item.fail(
            "trusted_proxies",
            "missing; with proxy_protocol = true name the load balancers that may send "
            'the header, e.g. ["198.18.0.0/15"] ("0.0.0.0/0" and "::/0" trust anyone)',
        )
    return enabled, networks


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _networks(item: Table, key: str) -> Networks:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, cidr in enumerate(item.strings(key, [])):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            Table({}, item.file, item.where(key)).fail(
                i, f'expected an address or network such as "198.18.0.0/15", got {cidr!r}'
            )
    return tuple(networks)


def trusts_anyone(networks: Networks) -> bool:
    """Whether a trust list lets every address in (what `check-config` warns about)."""
    return any(n.prefixlen == 0 for n in networks)


def _route_timeouts(item: Table, defaults: Timeouts) -> Timeouts | None:
    if "timeouts" not in item.data:
        return None
    t = item.table("timeouts")
    t.reject_unknown(set(ROUTE_TIMEOUTS))
    return replace(
        defaults,
        **{name: t.number(name, getattr(defaults, name), min=0) for name in ROUTE_TIMEOUTS},
    )


def parse_routes(
    doc: Table, backends: dict[str, BackendConfig], settings: ProxySectionConfig | None = None
) -> tuple[RouteConfig, ...]:
    defaults = Timeouts() if settings is None else settings.timeouts
    routes: list[RouteConfig] = []
    for item in doc.array("routes"):
        item.reject_unknown({"host", "path_prefix", "backend", "max_body_size", "timeouts"})
        host = item.string("host", None)
        if host is not None:
            host = host.lower()
            if host.startswith("*."):
                host = host[1:]
            if not host or "*" in host or "/" in host or ":" in host:
                item.fail("host", f'expected a host name or "*.suffix" (no port), got {host!r}')
        prefix = item.string("path_prefix", "/")
        if not prefix.startswith("/"):
            item.fail("path_prefix", f'expected a path starting with "/", got {prefix!r}')
        backend = item.string("backend")
        if backend not in backends:
            known = ", ".join(sorted(backends)) or "none defined"
            item.fail("backend", f"unknown backend {backend!r} (backends: {known})")
        routes.append(
            RouteConfig(
                host=host,
                path_prefix=prefix,
                backend=backend,
                max_body_size=item.integer("max_body_size", 0, min=0),
                timeouts=_route_timeouts(item, defaults),
            )
        )
    if not routes:
        doc.fail("routes", "missing; expected at least one [[routes]] with a backend")
    return tuple(routes)


def _server(servers: Table, index: int, item: object) -> ServerConfig:
    if isinstance(item, str):
        host, port = parse_address(servers, index, item)
        return ServerConfig(host=host, port=port)
    if not isinstance(item, dict):
        servers.fail(
            index, f'expected "host:port" or {{ address = "host:port", ... }}, got {item!r}'
        )
    entry = Table(item, servers.file, servers.where(index))
    entry.reject_unknown({"address", "weight", "max_conns"})
    host, port = parse_address(entry, "address", entry.string("address"))
    weight = entry.integer("weight", 1, min=1)
    if weight > 1000:
        entry.fail("weight", f"expected an integer from 1 to 1000, got {weight}")
    return ServerConfig(
        host=host, port=port, weight=weight, max_conns=entry.integer("max_conns", 0, min=0)
    )


def _health(backend: Table) -> HealthConfig:
    h = backend.table("health", {})
    h.reject_unknown(set(HealthConfig.__dataclass_fields__))
    d = HealthConfig()
    path = h.string("path", None)
    if path is not None and not path.startswith("/"):
        h.fail("path", f'expected a path starting with "/", got {path!r}')
    expect = h.data.get("expect_status", list(d.expect_status))
    if isinstance(expect, int) and not isinstance(expect, bool):
        expect = [expect]
    if (
        not isinstance(expect, list)
        or not expect
        or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect
        )
    ):
        h.fail(
            "expect_status", f"expected a status code or a list of them (100-599), got {expect!r}"
        )
    interval = h.number("interval", d.interval, min=0.01)
    timeout = h.number("timeout", d.timeout, min=0.01)
    return HealthConfig(
        path=path,
        interval=interval,
        timeout=timeout,
        rise=h.integer("rise", d.rise, min=1),
        fall=h.integer("fall", d.fall, min=1),
        expect_status=tuple(expect),
        passive=h.boolean("passive", d.passive),
        passive_5xx=h.boolean("passive_5xx", d.passive_5xx),
        retry_down_after=h.number("retry_down_after", d.retry_down_after, min=0.01),
    )


def _hash_key(backend: Table, balance: str) -> HashKey | None:
    raw = backend.string("hash_key", None)
    if raw is None:
        if balance == "header_hash":
            backend.fail(
                "hash_key", 'missing; header_hash needs "header:<Name>" or "cookie:<name>"'
            )
        return None
    kind, _, name = raw.partition(":")
    if kind not in ("header", "cookie") or not name.strip():
        backend.fail("hash_key", f'expected "header:<Name>" or "cookie:<name>", got {raw!r}')
    if balance != "header_hash":
        backend.fail("hash_key", f'only used with balance = "header_hash" (balance is {balance!r})')
    name = name.strip()
    return HashKey(kind=kind, name=name.lower() if kind == "header" else name)


def parse_backends(doc: Table) -> dict[str, BackendConfig]:
    backends: dict[str, BackendConfig] = {}
    for name, backend in doc.tables("backends"):
        backend.reject_unknown(
            {"servers", "balance", "hash_key", "retries", "health"}
            | {"tls", "tls_ca", "tls_server_name", "send_proxy"}
        )
        raw_servers = backend.data.get("servers")
        if not isinstance(raw_servers, list) or not raw_servers:
            got = "nothing" if raw_servers is None else repr(raw_servers)
            backend.fail("servers", f'expected a list of "host:port" servers, got {got}')
        servers_table = Table({}, backend.file, backend.where("servers"))
        servers = tuple(_server(servers_table, i, item) for i, item in enumerate(raw_servers))
        seen: set[str] = set()
        for i, server in enumerate(servers):
            if server.address in seen:
                servers_table.fail(i, f"duplicate server {server.address}")
            seen.add(server.address)
        balance = backend.choice("balance", BALANCE_ALGORITHMS, "least_conn")
        backends[name] = BackendConfig(
            name=name,
            servers=servers,
            balance=balance,
            hash_key=_hash_key(backend, balance),
            retries=backend.integer("retries", 2, min=0),
            health=_health(backend),
            tls=parse_backend_tls(backend),
            send_proxy=backend.choice("send_proxy", ("v1", "v2"), None),
        )
    if not backends:
        doc.fail("backends", "missing; expected at least one [backends.<name>] with servers")
    return backends


def parse_proxy(doc: Table) -> ProxyConfig:
    """All proxy sections of a loaded config file, or ConfigError naming file and key."""
    settings = parse_proxy_section(doc)
    backends = parse_backends(doc)
    return ProxyConfig(
        admin=parse_admin(doc),
        proxy=settings,
        listeners=parse_listeners(doc, settings),
        routes=parse_routes(doc, backends, settings),
        backends=backends,
    )
