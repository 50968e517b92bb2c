"""`make demo`: bring the lab up (or reuse it) and walk through a failover a user can watch.

The tour keeps a chat client connected through the VIP from the client
namespace the whole time, moves the VIP by hand (`hactl failover`), kills the
active node (`hactl lab kill`), and shows after each step where the client
landed and how long it was cut off. It leaves the lab running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import click

from haproxy_py.cluster.store import StoreError
from haproxy_py.cluster.timing import PROFILES
from haproxy_py.lab import control
from haproxy_py.lab.client import NetnsLoop, whoami
from haproxy_py.lab.layout import PROXY_PORT, LayoutError
from haproxy_py.lab.netns import NetnsError
from haproxy_py.logging import configure as configure_logging


def step(title: str, why: str) -> None:
    click.echo("")
    click.secho(f"== {title}", bold=True)
    click.echo(why)


def show(lab: control.Lab, *args: str) -> None:
    click.secho(f"$ hactl {' '.join(args)}", fg="cyan")
    done = lab.hactl(*args)
    click.echo((done.stdout + done.stderr).rstrip())


@dataclass
class ChatClient:
    """A chat WebSocket through the VIP that reconnects by itself and remembers what happened."""

    vip: str
    log: list[tuple[float, str]] = field(default_factory=list)
    node: str | None = None
    backend: str | None = None
    connected_at: float | None = None

    async def run(self) -> None:
        delay = 0.1
        url = f"http://{self.vip}:{PROXY_PORT}/chat"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(connect=2)) as session:
            while True:
                try:
                    async with session.ws_connect(url, heartbeat=5) as ws:
                        hello = await ws.receive_json(timeout=5)
                        self.backend = hello.get("backend")
                        self.node = await whoami(self.vip, PROXY_PORT, 2)
                        self.connected_at = time.monotonic()
                        self.note(f"connected through proxy {self.node} to backend {self.backend}")
                        delay = 0.1
                        code = await closed_with(ws)
                        self.note(f"connection closed with code {code}{CLOSE_CODES.get(code, '')}")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.note(f"connect failed ({type(exc).__name__}), retrying")
                self.node = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def note(self, text: str) -> None:
        self.log.append((time.monotonic(), text))

    def since(self, start: float) -> list[str]:
        return [f"  +{at - start:6.2f} s  {text}" for at, text in self.log if at >= start]


CLOSE_CODES: dict[int | None, str] = {
    1001: " (Going Away: the proxy node let the VIP go)",
    1006: " (no close frame: the connection just broke)",
}


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """The code of the close frame the server sent, or aiohttp's own code if none came.

    Not `ws.close_code` alone: after a planned move the client's reply goes to the VIP's
    new node, which resets it, and aiohttp then reports 1006 although 1001 arrived.
    """
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            return ws.close_code


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def owner(lab: control.Lab, vip: str) -> str | None:
    try:
        return lab.view().owner(vip)
    except StoreError:
        return None


def tour(profile: str) -> None:
    missing = control.missing_requirements()
    if missing is not None:
        raise click.ClickException(missing)
    try:
        lab = control.Lab.load()
        step("Lab", f"A lab is already up (state in {control.RUN_DIR}); the tour uses it.")
    except control.LabError:
        step("hactl lab up", "Building the cluster in network namespaces on this machine.")
        lab = control.Lab.up(profile=profile, say=click.echo)
    vip = lab.layout.vips[0]
    if not wait(lab.ready, 60):
        raise click.ClickException("the lab is not healthy; see `hactl status` and its logs")

    step("hactl status", "Who leads, which node holds the VIP, and the health of each proxy.")
    show(lab, "status")

    step(
        "A chat client",
        f"A WebSocket client in namespace {lab.layout.client.netns} joins the chat "
        f"through the VIP {vip}:{PROXY_PORT}; it reconnects by itself when cut off.",
    )
    with NetnsLoop(lab.layout.client.netns) as loop:
        client = ChatClient(vip)
        loop.submit(client.run())
        start = time.monotonic()
        wait(lambda: client.node is not None, 20)
        click.echo("\n".join(client.since(start)))

        step(
            "hactl failover",
            "A planned move: the controller asks the active node to let the VIP go and gives "
            "it to the standby. The old node closes its WebSockets with 1001 Going Away.",
        )
        before = owner(lab, vip)
        start = time.monotonic()
        show(lab, "failover", "-y")
        wait(lambda: client.node not in (None, before), 20)
        click.echo(
            "The chat client (times from the start of the command above):\n"
            + "\n".join(client.since(start))
        )

        active = owner(lab, vip) or lab.layout.nodes[0].name
        step(
            f"hactl lab kill {active}",
            f"SIGKILL of everything on {active}, the active node: no goodbye. Its VIP "
            "falls silent when its fence runs out, its etcd lease expires "
            f"(TTL {lab.layout.timing.lease_ttl} s) and the controller hands the VIP to a "
            "healthy node.",
        )
        start = time.monotonic()
        click.secho(f"$ hactl lab kill {active}", fg="cyan")
        click.echo("killed " + ", ".join(lab.kill(active)))
        moved = wait(lambda: owner(lab, vip) not in (None, active), 30)
        took = time.monotonic() - start
        click.echo(
            f"VIP {vip} moved to {owner(lab, vip)} {took:.1f} s after the kill"
            if moved
            else f"VIP {vip} did not move within 30 s"
        )
        wait(lambda: client.node not in (None, active), 20)

        step(
            "hactl history",
            "Every VIP move with its cause. GAP is how long etcd showed the VIP without an "
            "owner. After a node loss it counts from the moment etcd expired the dead node's "
            "lease, so clients were cut off for longer: the lease TTL came first.",
        )
        show(lab, "history", "-n", "5")

        step(
            "The chat client",
            "What the client saw since the kill: its connection broke at once, it retried "
            "with backoff, and got in again once the VIP was on the surviving node.",
        )
        click.echo("\n".join(client.since(start)))

        step(f"hactl lab restart {active}", f"{active} comes back as a standby.")
        lab.restart(active)
        wait(lab.ready, 30)
        show(lab, "status")

    ending(lab, owner(lab, vip) or lab.layout.nodes[0].name)


def ending(lab: control.Lab, active: str) -> None:
    """What to do next, naming the node that is active now so each fault is visible."""
    tries = [
        ("hactl failover -y", "a planned move: the page reconnects through the other node"),
        (
            f"hactl lab kill {active}",
            f"the active node; `hactl lab restart {active}` brings it back",
        ),
        (f"hactl lab partition {active}", f"cut off from etcd; `hactl lab heal {active}`"),
        (f"hactl lab stop-proxy {active}", f"only its proxy; `hactl lab restart {active}`"),
        ("hactl history", "every move, its cause and gap"),
    ]
    width = max(len(command) for command, _ in tries)
    click.echo("")
    click.secho("The lab keeps running.", bold=True)
    click.echo(f"  Chat page:  {lab.layout.host_url}  (open it in two tabs and chat)")
    click.echo("  Watch:      hactl status -w   (in a second terminal while you try things)")
    for i, (command, what) in enumerate(tries):
        click.echo(f"  {'Try:' if i == 0 else '':<12}{command:<{width}}  # {what}")
    click.echo("  Layout:     hactl lab status")
    click.echo("  Remove it:  make demo-down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haproxy_py.lab.tour", description=__doc__)
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    args = parser.parse_args(argv)
    configure_logging("error")  # the tour's own etcd reads warn while it kills things
    try:
        tour(args.profile)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (control.LabError, LayoutError, NetnsError, StoreError) as exc:
        click.echo(f"demo: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
