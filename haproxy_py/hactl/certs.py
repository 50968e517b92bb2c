"""`hactl certs init|issue|revoke`: the CAs, their certificates and CRLs (see haproxy_py.pki)."""

from __future__ import annotations

from pathlib import Path

import click

from haproxy_py import pki
from haproxy_py.hactl.errors import ConfigProblem

_DIR = click.Path(file_okay=False, path_type=Path)
_PEER = click.option(
    "--peer", is_flag=True, help="The etcd peer CA (peer-ca.*), for member-to-member TLS only."
)


def _ca(peer: bool) -> str:
    return pki.PEER_CA if peer else pki.CA


@click.group()
def certs() -> None:
    """Make the CAs and certificates; revoke them."""


@certs.command("init")
@click.option("--out", "out", type=_DIR, required=True, help="Directory for ca.crt and ca.key.")
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (every certificate must be re-issued)."
)
@click.option("--name", default=None, help="CA common name.")
@_PEER
def init(out: Path, force: bool, name: str | None, peer: bool) -> None:
    """Create the cluster CA (or with --peer the etcd peer CA) in DIR, kept if it exists."""
    name = name or ("haproxy-py etcd peer CA" if peer else "haproxy-py cluster CA")
    try:
        issued = pki.init_ca(out, common_name=name, force=force, ca=_ca(peer))
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
@_PEER
@click.argument("name")
def issue(
    ca_dir: Path,
    sans: tuple[str, ...],
    client: bool,
    out: Path | None,
    force: bool,
    peer: bool,
    name: str,
) -> None:
    """Issue NAME.crt and NAME.key signed by the cluster CA (or with --peer the peer CA).

    Without --client the certificate serves and peers (etcd members, proxy
    listeners) and its SANs default to NAME. A client certificate's NAME is its
    etcd user: agent-<node>, controller-<node>, operator-<name>, or root.
    """
    san_list = [s for value in sans for s in value.split(",") if s.strip()]
    try:
        issued = pki.issue(
            ca_dir, name, san_list, client=client, out=out, force=force, ca=_ca(peer)
        )
    except pki.PkiError as exc:
        raise ConfigProblem(str(exc)) from None
    verb = "issued" if issued.created else "kept valid"
    kind = "client" if client else "server/peer"
    click.echo(f"{verb} {kind} certificate {issued.cert} (key {issued.key})")


@certs.command("revoke")
@click.option("--ca", "ca_dir", type=_DIR, required=True, help="Directory made by `certs init`.")
@_PEER
@click.argument("cert", type=click.Path(dir_okay=False, path_type=Path))
def revoke(ca_dir: Path, peer: bool, cert: Path) -> None:
    """Put CERT (a .crt file, or a NAME in the CA directory) on the CA's revocation list.

    Copy the CRL to where etcd (--client-crl-file) and the admin API read it:
    the Ansible certs role does. etcd refuses the certificate from its next
    connection on.
    """
    path = cert if cert.suffix == ".crt" or cert.exists() else ca_dir / f"{cert}.crt"
    try:
        crl, added = pki.revoke(ca_dir, path, ca=_ca(peer))
    except pki.PkiError as exc:
        raise ConfigProblem(str(exc)) from None
    verb = "revoked" if added else "already revoked:"
    click.echo(f"{verb} {path}; CRL {crl}")
