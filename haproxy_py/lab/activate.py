"""Start the proxy as systemd's haproxy-py.socket does, with no capability but binding low ports.

    python -m haproxy_py.lab.activate --listen HOST:PORT [--listen ...] -- COMMAND...

Binds each address as `ListenStream=` with `FreeBind=yes` and
`Transparent=yes` would (IP_TRANSPARENT is set here, by a process that may),
passes the sockets in the `LISTEN_FDS` convention of sd_listen_fds(3), and
execs COMMAND through `setpriv` with every capability dropped from the bounding
set but CAP_NET_BIND_SERVICE. The lab's proxies run like this, so the lab
proves what the hardened unit promises: a moved VIP's clients get their 1001
from a proxy that could not have set IP_TRANSPARENT itself.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys

SD_LISTEN_FDS_START = 3  # as haproxy_py.proxy.listeners reads them (sd_listen_fds(3))

IP_FREEBIND = 15
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
BACKLOG = 1024
KEEP = "net_bind_service"


def command(addresses: list[str], argv: list[str]) -> list[str]:
    """The command line that runs `argv` so (for the lab's process spawner)."""
    listens = [arg for address in addresses for arg in ("--listen", address)]
    return [sys.executable, "-m", "haproxy_py.lab.activate", *listens, "--", *argv]


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


def main(argv: list[str]) -> int:
    addresses: list[str] = []
    while argv[:1] == ["--listen"] and len(argv) > 1:
        addresses.append(argv[1])
        argv = argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        sockets = [listen(address) for address in addresses]
    except (OSError, ValueError) as exc:
        print(f"activate: cannot listen on {addresses}: {exc}", file=sys.stderr)
        return 1
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
