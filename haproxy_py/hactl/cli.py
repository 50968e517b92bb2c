"""`hactl`: the operator's CLI (entry point `main`); see haproxy_py.hactl for the contract."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from haproxy_py import __version__
from haproxy_py.hactl.actions import drain, failover, pause, resume, undrain
from haproxy_py.hactl.certs import certs
from haproxy_py.hactl.connection import Options
from haproxy_py.hactl.status import history, status
from haproxy_py.lab.cli import lab
from haproxy_py.logging import configure


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--etcd",
    envvar="HACTL_ETCD",
    metavar="URL[,URL...]",
    help="etcd endpoints, host:port or http(s)://host:port.",
)
@click.option("--cluster", envvar="HACTL_CLUSTER", metavar="NAME", help="Cluster name.")
@click.option("--cacert", envvar="HACTL_CACERT", metavar="FILE", help="CA that signed etcd's cert.")
@click.option("--cert", envvar="HACTL_CERT", metavar="FILE", help="Client certificate for etcd.")
@click.option("--key", envvar="HACTL_KEY", metavar="FILE", help="Key of the client certificate.")
@click.option(
    "--etcd-timeout",
    envvar="HACTL_ETCD_TIMEOUT",
    type=click.FloatRange(min=0.05, max=60),
    metavar="SECONDS",
    help="Deadline of every etcd call (default 1).",
)
@click.option(
    "-c",
    "--config",
    envvar="HACTL_CONFIG",
    metavar="FILE",
    help="Node config or context file ([cluster] name, [etcd]); default: the lab's.",
)
@click.version_option(__version__, prog_name="hactl")
@click.pass_context
def cli(
    ctx: click.Context,
    etcd: str | None,
    cluster: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    etcd_timeout: float | None,
    config: str | None,
) -> None:
    """Operate a haproxy_py cluster: status, failover, maintenance, history, certificates.

    Connection settings come from options, then HACTL_* environment variables,
    then --config FILE or the running lab's context file.
    """
    ctx.obj = Options(
        etcd=etcd,
        cluster=cluster,
        cacert=cacert,
        cert=cert,
        key=key,
        etcd_timeout=etcd_timeout,
        config=config,
    )


@cli.command()
def version() -> None:
    """Print hactl's version."""
    click.echo(f"hactl {__version__}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script.

    e.g. `hactl completion bash > /etc/bash_completion.d/hactl`
    """
    completer = get_completion_class(shell)
    assert completer is not None  # the choice above lists only shells click supports
    click.echo(completer(cli, {}, "hactl", "_HACTL_COMPLETE").source())


for command in (status, failover, pause, resume, drain, undrain, history, certs, lab):
    cli.add_command(command)


def main() -> None:
    # The store logs endpoint switches and retries; a CLI keeps stdout for its output
    # (scripts parse `-o json`) and shows only errors, on stderr.
    configure(level="error")
    cli(prog_name="hactl")
