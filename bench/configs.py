"""Configuration files for the proxies under test, rendered from a few values.

Each proxy gets the settings an operator would use for WebSocket + HTTP
keep-alive: one worker/thread, HTTP/1.1 with pooled upstream connections,
Upgrade passed through, long tunnel timeouts, file/connection limits high
enough for the idle test, and access logs on as deployed: nginx's buffered
(`buffer=64k flush=1s`, to a file), haproxy-py's default (buffered JSON lines
on stderr, which the harness sends to a file). haproxy logs nothing without a
`log` target, as in its default configuration.
"""

from __future__ import annotations

import json
from pathlib import Path


def max_clients(fd_limit: int) -> int:
    """Client connections a proxy can hold when each needs a second descriptor upstream."""
    return (fd_limit - 200) // 2


def nginx_conf(
    *,
    listen: int,
    backend: str,
    workdir: Path,
    buffer_64k: bool,
    fd_limit: int,
    workers: str = "1",
) -> str:
    """nginx with one worker; `proxy_buffer_size` also sizes the buffers of upgraded connections.

    nginx starts reusing connections once fewer than 1/16 of `worker_connections`
    are free, so they are set well above what the open-file limit allows: the
    file limit is the real bound, as for the other proxies.
    """
    buffers = (
        "            proxy_buffer_size 64k;\n            proxy_buffers 8 64k;\n"
        if buffer_64k
        else ""
    )
    return f"""\
worker_processes {workers};
daemon off;
master_process on;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
worker_rlimit_nofile {fd_limit};
events {{
    worker_connections {fd_limit * 2};
}}
http {{
    access_log {workdir}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
    upstream app {{
        server {backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
{buffers}        }}
    }}
}}
"""


def haproxy_cfg(*, listen: int, backend: str, fd_limit: int) -> str:
    """haproxy in HTTP mode, one thread, default buffers, connection reuse to the backend."""
    maxconn = max_clients(fd_limit)
    return f"""\
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-keep-alive 1h

frontend web
    bind 127.0.0.1:{listen} backlog 4096
    default_backend app

backend app
    http-reuse safe
    server s1 {backend} maxconn {maxconn}
"""


def haproxy_py_toml(
    *, listen: int, admin: int, backend: str, fd_limit: int, workers: str = "1"
) -> str:
    """The issue's minimal file (access log on, the default) plus the idle test's limit."""
    proxy = (
        ""
        if not workers
        else f"[proxy]\nworkers = {json.dumps(workers) if workers == 'auto' else workers}\n\n"
    )
    return f"""\
[admin]
bind = "127.0.0.1:{admin}"

{proxy}[proxy.limits]
max_connections = {max_clients(fd_limit)}

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"

[[routes]]
path_prefix = "/"
backend = "app"

[backends.app]
servers = ["{backend}"]
"""
