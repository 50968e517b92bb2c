"""`hactl certs init|issue`: the cluster CA and its certificates (see haproxy_py.pki)."""

from __future__ import annotations

from pathlib import Path

import click

from haproxy_py import pki
from haproxy_py.hactl.errors import ConfigProblem

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group()
def certs() -> None:
    """Make the cluster CA and certificates."""


@certs.command("init")
@click.option("--out", "out", type=_DIR, required=True, help="Directory for ca.crt and ca.key.")
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (every certificate must be re-issued)."
)
@click.option("--name", default="haproxy-py cluster CA", show_default=True, help="CA common name.")
def init(out: Path, force: bool, name: str) -> None:
    """Create the cluster CA in DIR (kept as it is if it already exists)."""
    try:
        issued = pki.init_ca(out, common_name=name, force=force)
    except pki.PkiError as exc:
        raise ConfigProblem(str(exc)) from None
    verb = "created" if issued.created else "kept existing"
    click.echo(f"{verb} CA {issued.cert} (key {issued.key})")


@certs.command("issue")
@click.option("--ca", "ca_dir", type=_DIR, required=True, help="Directory made by `certs init`.")
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="NAME|IP[,...]",
    help="Subject alternative name: DNS name or IP address; repeat or separate with commas.",
)
@click.option(
    "--client", is_flag=True, help="Client-only certificate (hactl users, agents, controllers)."
)
@click.option(
    "--out", type=_DIR, default=None, help="Output directory (default: the CA directory)."
)
@click.option("--force", is_flag=True, help="Re-issue even if a valid certificate exists.")
@click.argument("name")
def issue(
    ca_dir: Path, sans: tuple[str, ...], client: bool, out: Path | None, force: bool, name: str
) -> None:
    """Issue NAME.crt and NAME.key signed by the cluster CA.

    Without --client the certificate serves and peers (etcd members, proxy
    listeners) and its SANs default to NAME.
    """
    san_list = [s for value in sans for s in value.split(",") if s.strip()]
    try:
        issued = pki.issue(ca_dir, name, san_list, client=client, out=out, force=force)
    except pki.PkiError as exc:
        raise ConfigProblem(str(exc)) from None
    verb = "issued" if issued.created else "kept valid"
    kind = "client" if client else "server/peer"
    click.echo(f"{verb} {kind} certificate {issued.cert} (key {issued.key})")
