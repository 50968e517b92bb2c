"""The connection options as typed (kept apart so that `hactl --help` loads nothing else)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """The raw connection options as given (None: not given on the command line or in env)."""

    etcd: str | None = None
    cluster: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    etcd_timeout: float | None = None
    config: str | None = None
