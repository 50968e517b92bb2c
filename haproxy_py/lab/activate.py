"""Start the proxy as systemd's haproxy-py.socket does, with no capability but binding low ports.

    python -m haproxy_py.lab.activate --listen HOST:PORT [--listen ...] -- COMMAND...
    python -m haproxy_py.lab.activate --hold PATH --listen HOST:PORT [--listen ...]
    python -m haproxy_py.lab.activate --from PATH -- COMMAND...

Binds each address as `ListenStream=` with `FreeBind=yes` and
`Transparent=yes` would (IP_TRANSPARENT is set here, by a process that may),
passes the sockets in the `LISTEN_FDS` convention of sd_listen_fds(3), and
execs COMMAND through `setpriv` with every capability dropped from the bounding
set but CAP_NET_BIND_SERVICE. The lab's proxies run like this, so the lab
proves what the hardened unit promises: a moved VIP's clients get their 1001
from a proxy that could not have set IP_TRANSPARENT itself.

`--hold` is the socket unit itself: it binds the sockets once and keeps them,
handing them (SCM_RIGHTS over the Unix socket PATH) to every `--from PATH`
start of the proxy. So, as under systemd, a connection that arrives while the
proxy stops or restarts waits in the listening socket's queue for the next
proxy, instead of being reset when the old process exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from typing import NoReturn

SD_LISTEN_FDS_START = 3  # as haproxy_py.proxy.listeners reads them (sd_listen_fds(3))

IP_FREEBIND = 15
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
BACKLOG = 1024
KEEP = "net_bind_service"
MAX_FDS = 64
TAKE_WAIT = 15.0  # s a proxy start waits for its holder to be listening


def _listens(addresses: list[str]) -> list[str]:
    return [arg for address in addresses for arg in ("--listen", address)]


def command(addresses: list[str], argv: list[str]) -> list[str]:
    """The command line that runs `argv` so (for the lab's process spawner)."""
    return [sys.executable, "-m", "haproxy_py.lab.activate", *_listens(addresses), "--", *argv]


def hold_command(path: str, addresses: list[str]) -> list[str]:
    """The command line of a holder: the sockets on `addresses`, kept and handed out at `path`."""
    return [sys.executable, "-m", "haproxy_py.lab.activate", "--hold", path, *_listens(addresses)]


def from_command(path: str, argv: list[str]) -> list[str]:
    """The command line that runs `argv` with the sockets of the holder at `path`."""
    return [sys.executable, "-m", "haproxy_py.lab.activate", "--from", path, "--", *argv]


def listen(address: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT ([v6]:PORT), free-bound and transparent."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    v6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    sock.bind((host, int(port)))
    sock.listen(BACKLOG)
    return sock


def pass_on(sockets: list[socket.socket]) -> dict[str, str]:
    """Put the sockets on descriptors 3, 4, ... (inheritable); the environment that says so."""
    fds = [sock.detach() for sock in sockets]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    return {"LISTEN_FDS": str(len(sockets)), "LISTEN_PID": str(os.getpid())}


def hold(path: str, sockets: list[socket.socket]) -> NoReturn:
    """Keep `sockets` and hand them to every process that connects to `path`, until killed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.umask(0o077)  # only root may take the sockets
    server.bind(path)
    server.listen(8)
    fds = [sock.fileno() for sock in sockets]
    while True:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            socket.send_fds(conn, [b"sockets"], fds)


def take(path: str, wait: float = TAKE_WAIT) -> list[socket.socket]:
    """The sockets of the holder at `path` (waiting for it to listen); OSError if none."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            try:
                conn.connect(path)
                _, fds, _, _ = socket.recv_fds(conn, 16, MAX_FDS)
                return [socket.socket(fileno=fd) for fd in fds]
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)


def _usage() -> int:
    print("usage: " + " | ".join(__doc__.strip().splitlines()[2:5]).strip(), file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    holder = source = None
    if argv[:1] == ["--hold"] and len(argv) > 1:
        holder, argv = argv[1], argv[2:]
    elif argv[:1] == ["--from"] and len(argv) > 1:
        source, argv = argv[1], argv[2:]
    addresses: list[str] = []
    while argv[:1] == ["--listen"] and len(argv) > 1:
        addresses.append(argv[1])
        argv = argv[2:]
    if holder is not None:
        if argv or not addresses:
            return _usage()
    elif argv[:1] != ["--"] or len(argv) < 2 or (source is not None and addresses):
        return _usage()
    try:
        sockets = take(source) if source is not None else [listen(a) for a in addresses]
    except (OSError, ValueError) as exc:
        where = f"the holder at {source}" if source is not None else addresses
        print(f"activate: no sockets from {where}: {exc}", file=sys.stderr)
        return 1
    if holder is not None:
        hold(holder, sockets)
    env = {**os.environ, **pass_on(sockets)}
    setpriv = [
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        f"--bounding-set=-all,+{KEEP}",
        "--",
        *argv[1:],
    ]
    os.execvpe("setpriv", setpriv, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
