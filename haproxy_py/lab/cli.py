"""`hactl lab ...`: bring the one-machine lab up and down, and inject faults."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import click

from haproxy_py.cluster.bird import BirdError
from haproxy_py.cluster.timing import PROFILES
from haproxy_py.hactl.errors import HactlError
from haproxy_py.lab import bgplab, control
from haproxy_py.lab.layout import LAB_MODES, MODES, PROXY_PORT, LayoutError
from haproxy_py.lab.netns import NetnsError
from haproxy_py.logging import configure as configure_logging

_ERRORS = (control.LabError, LayoutError, NetnsError)


@click.group()
@click.option(
    "--run-dir",
    envvar="HAPROXY_PY_LAB_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=control.RUN_DIR,
    show_default=True,
    help="Where the lab keeps its state, certificates, configs and logs.",
)
@click.pass_context
def lab(ctx: click.Context, run_dir: Path) -> None:
    """The whole cluster in network namespaces on this machine (root).

    3 etcd members (mTLS), N proxy nodes (haproxy-py + ha-agent + ha-controller),
    two demo app backends and a client, on a bridge with 198.18.x.y addresses.
    """
    ctx.meta["lab_run_dir"] = run_dir
    # The lab polls etcd while members come and go; its client's warnings are noise here.
    configure_logging("error")


def _dir() -> Path:
    run_dir: Path = click.get_current_context().meta["lab_run_dir"]
    return run_dir


def _requirements() -> None:
    missing = control.missing_requirements()
    if missing is not None:
        raise HactlError(missing)


def _load() -> control.Lab:
    _requirements()
    try:
        return control.Lab.load(_dir())
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None


@lab.command()
@click.option("--nodes", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--mode", type=click.Choice(LAB_MODES), default="active-standby", show_default=True)
@click.option("--vips", type=click.IntRange(1, 16), help="Default: 1, or one per node (a-a).")
@click.option(
    "--prefix",
    default=control.DEFAULT_PREFIX,
    show_default=True,
    help="Name prefix of the lab's namespaces and links.",
)
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default="default",
    show_default=True,
    help="Timing profile: default (lease TTL 2 s) or fast (TTL 1 s: node loss in about 1.1 s).",
)
@click.option(
    "--resilient-router",
    is_flag=True,
    help="BGP mode: the router keeps flows in place when nodes come and go.",
)
def up(
    nodes: int, mode: str, vips: int | None, prefix: str, profile: str, resilient_router: bool
) -> None:
    """Build the lab, wait until a VIP answers, and point plain `hactl` at it."""
    _requirements()
    if resilient_router and mode != "bgp":
        raise HactlError("--resilient-router needs --mode bgp (the other modes have no router)")
    try:
        built = control.Lab.up(
            run_dir=_dir(),
            prefix=prefix,
            nodes=nodes,
            mode=mode,
            vips=vips,
            profile=profile,
            say=click.echo,
        )
        if resilient_router:
            built.use_resilient_router()
    except (*_ERRORS, BirdError) as exc:
        raise HactlError(str(exc)) from None
    if built.layout.mode == "bgp":
        click.echo(bgplab.summary(built))
    status = built.hactl("status")
    click.echo(status.stdout + status.stderr)
    layout = built.layout
    click.echo(f"VIPs {', '.join(layout.vips)}, port {PROXY_PORT}; try from the client namespace:")
    click.echo(
        f"  ip netns exec {layout.client.netns} curl -i http://{layout.vips[0]}:{PROXY_PORT}/whoami"
    )
    click.echo(f"Chat page from this machine: {layout.host_url}")
    click.echo("Faults: hactl lab kill|stop-proxy|partition|heal|restart NODE; hactl lab down")


@lab.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def status(output: str) -> None:
    """Show the lab's layout: namespaces, addresses, VIPs, etcd and the host URL."""
    try:
        loaded = control.Lab.load(_dir())
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    layout = loaded.layout
    doc = layout.status_json()
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"lab {layout.mode}, profile {layout.profile}, subnet {layout.subnet}, run dir {_dir()}"
    )
    bgp = layout.mode == "bgp"  # no etcd in the BGP lab yet
    for m in (*layout.nodes, *(() if bgp else layout.etcd), *layout.apps, layout.client):
        click.echo(f"  {m.name:<8} {m.address:<15} netns {m.netns}")
    click.echo(f"  VIPs     {', '.join(layout.vips)} (port {PROXY_PORT})")
    click.echo(f"  host URL {layout.host_url}")
    if bgp:
        with contextlib.suppress(BirdError, NetnsError):
            click.echo(bgplab.summary(loaded))


@lab.command()
@click.argument("name")
@click.option(
    "--only",
    type=click.Choice(control.NODE_PROCESSES),
    help="Kill just this process of the node.",
)
def kill(name: str, only: str | None) -> None:
    """SIGKILL everything of a node (or of an etcd member or app: etcd2, app1)."""
    target = _load()
    try:
        killed = target.kill(name, only)
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo(f"killed {', '.join(killed)}" if killed else f"nothing of {name} was running")


@lab.command("stop-proxy")
@click.argument("node")
def stop_proxy(node: str) -> None:
    """SIGKILL only the node's proxy; its agent sees it and gives the VIPs up."""
    target = _load()
    try:
        killed = target.kill(node, "proxy")
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo(f"killed {', '.join(killed)}" if killed else f"{node}'s proxy was not running")


@lab.command()
@click.argument("node")
def partition(node: str) -> None:
    """Cut a node off from etcd and the other nodes (clients still reach it)."""
    target = _load()
    try:
        peers = target.partition(node)
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo(f"{node} can no longer reach {', '.join(peers)}; `hactl lab heal {node}` undoes it")


@lab.command()
@click.argument("node")
def heal(node: str) -> None:
    """Undo `partition`."""
    target = _load()
    try:
        target.heal(node)
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo(f"{node} reaches etcd and its peers again")


@lab.command()
@click.argument("name")
def restart(name: str) -> None:
    """Start again what of a node (etcd member, app) is not running; heal its partition."""
    target = _load()
    try:
        target.restart(name)
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo(f"{name}: running {', '.join(target.running(name))}")


@lab.command()
def down() -> None:
    """Remove every namespace, link, process and file of the lab (also after a crash)."""
    _requirements()
    try:
        found = control.down(_dir())
    except _ERRORS as exc:
        raise HactlError(str(exc)) from None
    click.echo("lab removed" if found else f"no lab found in {_dir()}; nothing to remove")


@lab.command()
@click.option("--faults", type=click.IntRange(1, 100_000), help="How many faults [default: 60].")
@click.option(
    "--duration", type=click.FloatRange(1), help="Seconds of faults (instead of --faults)."
)
@click.option("--seed", type=int, help="The schedule's seed (printed; default: random).")
@click.option("--mode", type=click.Choice(MODES), help="For a lab it brings up [active-standby].")
@click.option(
    "--prefix",
    default=control.DEFAULT_PREFIX,
    show_default=True,
    help="Name prefix of the namespaces and links of a lab it brings up.",
)
@click.option("--clients", type=click.IntRange(0, 1000), default=20, show_default=True)
@click.option(
    "--kinds", help="Comma-separated fault kinds to draw from (default: all; see docs/lab.md)."
)
@click.option(
    "--budget",
    type=click.FloatRange(0.1),
    default=8.0,
    show_default=True,
    help="Seconds from a heal until every VIP must answer again.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON report to this file.",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def chaos(
    faults: int | None,
    duration: float | None,
    seed: int | None,
    mode: str | None,
    prefix: str,
    clients: int,
    kinds: str | None,
    budget: float,
    report_file: Path | None,
    output: str,
) -> None:
    """Random faults under client load, invariants checked throughout; exit 1 on a violation.

    Uses the running lab, or brings one up (and down again) itself.
    """
    from haproxy_py.lab.chaos import session  # here: aiohttp & co. would slow every hactl start
    from haproxy_py.lab.chaos.run import STOP_SIGNALS

    if faults is not None and duration is not None:
        raise HactlError("give --faults or --duration, not both")
    try:
        chosen = session.options(
            faults=60 if faults is None and duration is None else faults,
            duration=duration,
            seed=seed,
            clients=clients,
            kinds=kinds,
            budget=budget,
        )
    except session.ChaosError as exc:
        raise HactlError(str(exc)) from None
    _requirements()
    say = (lambda _: None) if output == "json" else click.echo
    # SIGTERM (a `timeout`, a cancelled CI job) stops a run as Ctrl-C does: healed, cleaned up,
    # reported; not left with a fault in force and a lab nobody removes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = session.chaos(run_dir=_dir(), chosen=chosen, mode=mode, prefix=prefix, say=say)
    except (*_ERRORS, session.ChaosError) as exc:
        raise HactlError(str(exc)) from None
    # The lab is healed (or gone) and the load stopped: a late Ctrl-C (a second one, pressed
    # while the first was being handled) must not cut the report or the exit status short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    doc = report.to_json()
    if report_file is not None:
        report_file.write_text(json.dumps(doc, indent=2) + "\n")
    click.echo(json.dumps(doc, indent=2) if output == "json" else report.text())
    if not report.passed:
        raise SystemExit(1)
