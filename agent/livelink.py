"""The live link: a TUN device that lives exactly as long as the proxy process (BGP mode).

    python -m agent.livelink --device havips -- haproxy-py run --config node.toml

opens a (non-persistent) TUN device named `--device`, leaves it
administratively down, and execs the proxy, which inherits the descriptor
without knowing it: the PID stays the proxy's. When the proxy dies, for any
reason, the kernel closes its last descriptor and deletes the device; BIRD
sees the link go within milliseconds and withdraws every VIP route through
it (`check link`), whether or not the agent is alive. The agent brings the
link up once the proxy answers, and down when the node must not serve.
Children the proxy starts with close_fds (subprocess's default) do not keep
the link; forked workers do, as long as they live.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class LiveLinkError(Exception):
    """The device cannot be made; the message says why and what to do."""


def open_link(name: str) -> int:
    """A TUN device `name` held by the returned descriptor (inheritable, for exec)."""
    if not 1 <= len(name) <= 15 or "/" in name or name.strip() != name:
        raise LiveLinkError(f"--device must be an interface name of 1-15 characters, got {name!r}")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        raise LiveLinkError(
            f"cannot open /dev/net/tun: {exc.strerror} (needs CAP_NET_ADMIN)"
        ) from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        hint = (
            "another process holds it (is a proxy already running?)"
            if exc.errno == errno.EBUSY
            else "an interface of that name exists and is not a free TUN device"
            if exc.errno in (errno.EEXIST, errno.EINVAL)
            else exc.strerror
        )
        raise LiveLinkError(f"cannot create the live link {name}: {hint}") from None
    os.set_inheritable(fd, True)
    return fd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agent.livelink", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--device", required=True, help="the TUN device's name (BIRD's config names it)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the proxy's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the proxy's command after --")
    try:
        open_link(args.device)
    except LiveLinkError as exc:
        sys.exit(f"livelink: {exc}")
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"livelink: cannot run {command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
