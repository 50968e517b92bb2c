"""The live link: a TUN device that has carrier exactly while the proxy process lives (BGP mode).

    python -m agent.livelink --device havips -- haproxy-py run --config node.toml

attaches to the TUN device named `--device` (creating a non-persistent one
when none exists: the lab, as root), and execs the proxy, which inherits the
descriptor without knowing it: the PID stays the proxy's. When the proxy
dies, for any reason, the kernel closes its last descriptor: a non-persistent
device is deleted, a persistent one loses its carrier. Either way BIRD sees
the link go within milliseconds and withdraws every VIP route through it
(`check link`), whether or not the agent is alive. The agent brings the link
up once the proxy answers, and down when the node must not serve. Children
the proxy starts with close_fds (subprocess's default) do not keep the link;
forked workers do, as long as they live.

Under systemd the proxy has no CAP_NET_ADMIN, so a root step before it
(`ExecStartPre=+`) makes the device persistent and owned by the proxy's user:

    python -m agent.livelink --device havips --persistent haproxy-py

after which the proxy's own user may attach to it. That step also sets the
link down: a restarted proxy is announced only once the agent has seen it
answer, and not at all while the agent is away.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import pwd
import socket
import stat
import struct
import sys

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_UP = 0x1
TUN_DEVICE = "/dev/net/tun"


class LiveLinkError(Exception):
    """The device cannot be made; the message says why and what to do."""


def open_link(name: str) -> int:
    """A TUN device `name` held by the returned descriptor (inheritable, for exec)."""
    if not 1 <= len(name) <= 15 or "/" in name or name.strip() != name:
        raise LiveLinkError(f"--device must be an interface name of 1-15 characters, got {name!r}")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR)
    except OSError as exc:
        raise LiveLinkError(
            f"cannot open {TUN_DEVICE}: {exc.strerror} (it must be mode 0666, as udev makes it)"
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
            else "it is not this user's: make it with --persistent USER first (as root)"
            if exc.errno == errno.EPERM
            else exc.strerror
        )
        raise LiveLinkError(f"cannot create the live link {name}: {hint}") from None
    os.set_inheritable(fd, True)
    return fd


def make_persistent(name: str, user: str) -> None:
    """(root) The TUN device `name`, persistent and owned by `user`, administratively down;
    made when absent. /dev/net/tun is made mode 0666 where no udev did (containers): opening
    it grants nothing, creating a device needs CAP_NET_ADMIN and attaching needs ownership."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LiveLinkError(f"--persistent: no user {user!r} on this host") from None
    mode = os.stat(TUN_DEVICE).st_mode
    if stat.S_IMODE(mode) & 0o666 != 0o666:
        os.chmod(TUN_DEVICE, stat.S_IMODE(mode) | 0o666)
    fd = open_link(name)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
        fcntl.ioctl(fd, TUNSETOWNER, uid)
    finally:
        os.close(fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags & ~IFF_UP))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agent.livelink", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--device", required=True, help="the TUN device's name (BIRD's config names it)"
    )
    parser.add_argument(
        "--persistent",
        metavar="USER",
        help="(root) make the device persistent, owned by USER and down, then exit",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the proxy's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == (args.persistent is not None):
        parser.error("give either --persistent USER or the proxy's command after --")
    try:
        if args.persistent is not None:
            make_persistent(args.device, args.persistent)
            return
        open_link(args.device)
    except LiveLinkError as exc:
        sys.exit(f"livelink: {exc}")
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.exit(f"livelink: cannot run {command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
