"""The adversarial cases against haproxy-py and nginx side by side (a script, run once).

    .venv/bin/python -m tests.integration.adversarial.compare_nginx

Starts the recording backend, haproxy-py in process and Debian's nginx on
127.0.0.1 (config in a temp dir, an edge setup: keep-alive upstream, Upgrade
mapping, X-Forwarded-For and X-Real-IP, short timeouts), sends each case's
raw bytes to both on a fresh connection and prints, per case, the statuses
the client read and the requests the backend parsed. nginx is stopped by its
pid. docs/proxy-edge.md says where the two differ and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from haproxy_py.proxy.server import ProxyServer
from tests.integration.adversarial.backend import RecordingBackend
from tests.integration.adversarial.client import HANDSHAKE, config, statuses

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: internal\r\n\r\n"
CL = b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
CLOSE = b"Connection: close\r\n"
CASES: list[tuple[str, bytes]] = [
    (
        "Connection: Content-Length",
        b"POST /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Content-Length\r\n"
        + CL
        + SMUGGLED,
    ),
    ("Connection: close, Host", b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: close, Host\r\n\r\n"),
    ("refused upgrade + early request", b"GET /ws/refuse HTTP/1.1\r\n" + HANDSHAKE + SMUGGLED),
    (
        "h2c upgrade with a body",
        b"POST /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + CL + SMUGGLED,
    ),
    (
        "h2c upgrade, no body",
        b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + CLOSE + b"\r\n",
    ),
    ("no Host (HTTP/1.1)", b"GET /p HTTP/1.1\r\n" + CLOSE + b"\r\n"),
    ("two Host lines", b"GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + CLOSE + b"\r\n"),
    ("invalid Host", b"GET /p HTTP/1.1\r\nHost: a.example/x y\r\n" + CLOSE + b"\r\n"),
    (
        "absolute-form vs Host",
        b"GET http://a.example/abs HTTP/1.1\r\nHost: b.example\r\n" + CLOSE + b"\r\n",
    ),
    (
        "TE: gzip, chunked",
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
        + CLOSE
        + b"\r\n0\r\n\r\n",
    ),
    (
        "CL + TE",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        + CLOSE
        + b"\r\n0\r\n\r\n",
    ),
    (
        "duplicate CL",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n"
        + CLOSE
        + b"\r\nab",
    ),
    ("obs-fold", b"GET /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n" + CLOSE + b"\r\n"),
    (
        "Content_Length underscore",
        b"GET /p HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n" + CLOSE + b"\r\n",
    ),
    (
        "spoofed X-Real-IP / XFF",
        b"GET /p HTTP/1.1\r\nHost: a\r\nX-Real-IP: 7.7.7.7\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"Forwarded: for=8.8.8.8\r\n" + CLOSE + b"\r\n",
    ),
    (
        "WebSocket version 8",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + CLOSE
        + b"\r\n",
    ),
    (
        "Upgrade: notwebsocket",
        b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: notwebsocket\r\n"
        + CLOSE
        + b"\r\n",
    ),
    (
        "backend Connection: Content-Length",
        b"GET /conn-cl HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n"
        + CLOSE
        + b"\r\n",
    ),
    ("bytes after a response", b"GET /extra HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"),
    (
        "backend TE: gzip (close-delimited)",
        b"GET /te-gzip HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n",
    ),
    ("backend reset mid-body", b"GET /rst HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"),
    ("oversized response head", b"GET /big-head HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"),
    ("fragment in target", b"GET /p#frag HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"),
    (
        "header line of 100 KiB",
        b"GET /p HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 100_000 + b"\r\n" + CLOSE + b"\r\n",
    ),
]


def nginx_conf(listen: int, backend: str, workdir: Path) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    client_header_timeout 2s; client_body_timeout 2s; send_timeout 2s;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream app {{ server {backend}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 2s;
        }}
    }}
}}
"""


async def run_case(address: tuple[str, int], data: bytes, backend: RecordingBackend) -> str:
    before = len(backend.seen)
    reader, writer = await asyncio.open_connection(*address)
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()
    got = bytearray()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(3):  # a connection kept alive ends here
            while chunk := await reader.read(65536):
                got += chunk
    writer.close()
    await asyncio.sleep(0.2)
    seen = [
        f"{s.method} {s.path} host={s.header('Host')} cl={s.header('Content-Length')} "
        f"xff={s.header('X-Forwarded-For')} xri={s.header('X-Real-IP')}"
        for s in backend.seen[before:]
    ]
    return f"client {statuses(bytes(got)) or '(nothing)'}; backend {seen or '(nothing)'}"


async def main() -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    backend = RecordingBackend()
    await backend.start()
    proxy = ProxyServer(config(backend.address, proxy="[proxy]\naccess_log = false\n"), "node-a")
    await proxy.start()
    with tempfile.TemporaryDirectory(prefix="nginx-compare-") as tmp:
        workdir = Path(tmp)
        conf = workdir / "nginx.conf"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        conf.write_text(nginx_conf(port, backend.address, workdir))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)])  # noqa: ASYNC220
        try:
            await asyncio.sleep(1.0)
            for name, data in CASES:
                ours = await run_case(proxy.address("web"), data, backend)
                theirs = await run_case(("127.0.0.1", port), data, backend)
                print(f"## {name}\n  haproxy-py: {ours}\n  nginx:      {theirs}")
        finally:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(10)
    await proxy.stop()
    await backend.stop()


if __name__ == "__main__":
    asyncio.run(main())
