"""`hactl`: the operator's CLI (entry point `main`); see haproxy_py.hactl for the contract.

Commands are imported only when run: `hactl --help` and `hactl version` never
load etcd's gRPC client, the PKI or the lab (tests/unit/hactl/test_startup.py).
The short help of each command is therefore written twice, here and in its
docstring; a test keeps the two equal.
"""

from __future__ import annotations

import importlib

import click

from haproxy_py import __version__
from haproxy_py.hactl.options import Options

# name -> (module, attribute, short help as `hactl --help` lists it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "status": (
        "haproxy_py.hactl.status",
        "status",
        "Show the controller, nodes, VIPs and who holds them, and etcd's health.",
    ),
    "failover": (
        "haproxy_py.hactl.actions",
        "failover",
        "Move a VIP (or every VIP) to another node.",
    ),
    "pause": (
        "haproxy_py.hactl.actions",
        "pause",
        "Enter maintenance mode (no automatic failover).",
    ),
    "resume": (
        "haproxy_py.hactl.actions",
        "resume",
        "Leave maintenance mode (automatic failover again).",
    ),
    "drain": ("haproxy_py.hactl.actions", "drain", "Take NODE out of service."),
    "undrain": ("haproxy_py.hactl.actions", "undrain", "Bring a drained NODE back into service."),
    "history": (
        "haproxy_py.hactl.status",
        "history",
        "Show the last N VIP ownership changes (time, from, to, cause, gap).",
    ),
    "certs": ("haproxy_py.hactl.certs", "certs", "Make the CAs and certificates; revoke them."),
    "etcd": (
        "haproxy_py.hactl.etcd",
        "etcd",
        "Maintain etcd: compact, defragment, clear the NOSPACE alarm; users and roles.",
    ),
    "lab": (
        "haproxy_py.lab.cli",
        "lab",
        "The whole cluster in network namespaces on this machine (root).",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use; `--help` lists them from COMMANDS."""

    # Set by `main()`, the program (not in-process callers such as tests): the store logs
    # endpoint switches and retries, and a CLI keeps stdout for its output (scripts parse
    # `-o json`) and shows only errors, on stderr. Done as a command loads: not for --help.
    quiet_logs = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        if self.quiet_logs:
            from haproxy_py.logging import configure

            configure(level="error")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(1000)) for name, cmd in self.commands.items()]
        rows += [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the choice above lists only shells click supports
    click.echo(completer(cli, {}, "hactl", "_HACTL_COMPLETE").source())


def main() -> None:
    LazyGroup.quiet_logs = True
    cli(prog_name="hactl")
