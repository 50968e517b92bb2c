"""Where hactl finds etcd and which cluster it operates, from options, environment and files.

Precedence, per setting: command-line option, then its environment variable
(HACTL_ETCD, HACTL_CLUSTER, HACTL_CACERT, HACTL_CERT, HACTL_KEY,
HACTL_ETCD_TIMEOUT), then the file: `--config FILE` (HACTL_CONFIG) or, when
none is given, the context file ($HACTL_CONTEXT, else the running lab's
/run/haproxy-py/lab/context.toml if it exists). A file is a node config or a
context file of the same format with only `[cluster] name` and `[etcd]`; it
is parsed by the same parsers as the daemons use, so paths in it are relative
to the file. Without any of these hactl tries etcd on 127.0.0.1:2379.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from haproxy_py.cluster.config import EtcdConfig, parse_cluster, parse_etcd
from haproxy_py.configfile import ConfigError, Table, load
from haproxy_py.hactl.errors import ConfigProblem
from haproxy_py.hactl.options import Options

__all__ = ["OPTIONS_SOURCE", "Connection", "Options", "connection_of", "resolve"]

LAB_CONTEXT = Path("/run/haproxy-py/lab/context.toml")
OPTIONS_SOURCE = "hactl options"


@dataclass(frozen=True)
class Connection:
    cluster: str
    etcd: EtcdConfig
    source: str  # the file the settings came from, or OPTIONS_SOURCE


def connection_of(ctx: click.Context) -> Connection:
    """The connection for this invocation, from the group's options."""
    return resolve(ctx.find_object(Options) or Options())


def context_file(config: str | None, environ: dict[str, str]) -> Path | None:
    """The file to read: --config, else $HACTL_CONTEXT, else the lab's if it exists."""
    if config:
        return Path(config)
    if environ.get("HACTL_CONTEXT"):
        return Path(environ["HACTL_CONTEXT"])
    return LAB_CONTEXT if LAB_CONTEXT.is_file() else None


def resolve(options: Options, environ: dict[str, str] | None = None) -> Connection:
    """Merge options over the file and validate the result; ConfigProblem names what is wrong."""
    environ = dict(os.environ) if environ is None else environ
    path = context_file(options.config, environ)
    cluster_name = "default"
    base: dict[str, Any] = {}
    source = OPTIONS_SOURCE
    try:
        if path is not None:
            doc = load(path)
            cluster_name = parse_cluster(doc).name
            from_file = parse_etcd(doc)
            base = _as_raw(from_file)
            source = str(path)
        overrides = _overrides(options)
        if overrides:
            source = OPTIONS_SOURCE if path is None else f"{OPTIONS_SOURCE} over {path}"
        plain = any(e.startswith("http://") for e in overrides.get("endpoints", ()))
        if plain and "cacert" not in overrides:
            # Plain http:// endpoints given over a TLS file: the file's TLS files do not apply.
            for key in ("cacert", "cert", "key"):
                base.pop(key, None)
        merged = {**base, **overrides}
        etcd = parse_etcd(Table({"etcd": merged}, source, ""))
        if options.cluster is not None:
            cluster_name = parse_cluster(
                Table({"cluster": {"name": options.cluster}}, OPTIONS_SOURCE, "")
            ).name
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if etcd.cacert is not None:
        from haproxy_py import pki  # cryptography: only worth loading when there is TLS

        try:
            pki.check_client_files(etcd.cacert, etcd.cert, etcd.key)
        except pki.PkiError as exc:
            raise ConfigProblem(f"TLS: {exc}") from None
    return Connection(cluster=cluster_name, etcd=etcd, source=source)


def _as_raw(config: EtcdConfig) -> dict[str, Any]:
    raw: dict[str, Any] = {"endpoints": list(config.endpoints), "timeout": config.timeout}
    for key in ("cacert", "cert", "key"):
        value = getattr(config, key)
        if value is not None:
            raw[key] = str(value)
    return raw


def _overrides(options: Options) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if options.etcd is not None:
        raw["endpoints"] = [e.strip() for e in options.etcd.split(",") if e.strip()]
    if options.etcd_timeout is not None:
        raw["timeout"] = options.etcd_timeout
    for key in ("cacert", "cert", "key"):
        value = getattr(options, key)
        if value is not None:
            raw[key] = str(Path(value).absolute())
    return raw
