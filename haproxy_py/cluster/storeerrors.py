"""The store's errors, and gRPC's failure text put in our words.

    StoreError                 any store failure (message is for the operator)
    ├── StoreUnavailable       no endpoint answered in time (names endpoints + timeout)
    │   └── StoreTlsError      the TLS handshake failed (names whose certificate failed what)
    ├── LeaseLost              the lease is gone (expired, revoked, or TTL answered <= 0)
    └── RequestTimeout         no final result for a request in the time given

Messages are the store's own words: gRPC's detail text is read here (a TLS
failure reaches us as UNAVAILABLE, like a dead server, with BoringSSL's
reason in the text) and never passed on as is.

`store` raises these for every failure; nothing of gRPC's types or wording
reaches a caller (hactl shows the message as it is, the daemons log it).
"""

from __future__ import annotations

import structlog

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import Request

log = structlog.get_logger("haproxy_py.cluster.store")


class StoreError(Exception):
    """A store operation failed; the message is complete for the operator."""


class StoreUnavailable(StoreError):
    """No etcd endpoint answered within the timeout."""


class StoreTlsError(StoreUnavailable):
    """The TLS handshake with etcd failed; the message says whose certificate failed what."""


class LeaseLost(StoreError):
    """The lease no longer exists: every key bound to it is gone."""


class RequestTimeout(StoreError):
    """A request got no final result in time; `last` is the request as last seen."""

    def __init__(self, message: str, last: Request | None) -> None:
        super().__init__(message)
        self.last = last


def tls_failure(detail: str, config: EtcdConfig) -> str | None:
    """Which side's certificate failed which check, when gRPC's detail shows a TLS failure."""
    for marker in ("CERTIFICATE_VERIFY_FAILED", "not in peer certificate"):
        if marker in detail:
            return (
                f"etcd's server certificate failed verification against the CA file "
                f"{config.cacert}: wrong CA file, or the endpoint's name/IP is not in its SANs"
            )
    for marker in ("BAD_CERTIFICATE", "TSI_DATA_CORRUPTED"):
        if marker in detail:
            if config.cert is None:
                return (
                    "etcd requires a client certificate and none was given "
                    "([etcd] cert and key; hactl --cert/--key)"
                )
            return (
                f"etcd rejected client certificate {config.cert} "
                "(not signed by a CA etcd trusts, or not for client use)"
            )
    return None


_PLAIN = (  # gRPC's words for a failed connection -> ours
    ("Connection refused", "connection refused"),
    ("Domain name not found", "host name not found"),
    ("resolving", "host name not found"),
    ("Socket closed", "connection closed during the handshake"),
    ("Connection reset", "connection reset"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("Deadline Exceeded", "no answer in time"),
)


# etcd's answers for a call it could not finish in time (no leader, an election under way,
# a quorum not answering): the member is up, the cluster is not; the caller retries.
_TRANSIENT = (
    "context deadline exceeded",
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "timed out waiting for read index",
)


def transient(detail: str) -> bool:
    """Whether etcd's answer says "not now" rather than "no"."""
    return any(marker in detail for marker in _TRANSIENT)


def connection_failure(detail: str, config: EtcdConfig) -> str:
    """gRPC's text for a failed call, in our words: the TLS check that failed, or what
    happened to the connection (for `maintenance`, which talks to members one by one)."""
    return tls_failure(detail, config) or plain_words(detail, config)


def plain_words(detail: str, config: EtcdConfig) -> str:
    """What gRPC's text for a failed connection says, in our words; etcd's own words stay."""
    if "etcdserver: " in detail:
        return detail[detail.index("etcdserver: ") :].splitlines()[0]
    for marker, words in _PLAIN:
        if marker in detail:
            if words.startswith("connection closed") and not config.tls:
                words += "; etcd may require TLS: give https:// endpoints and a CA file"
            return words
    log.debug("etcd connection failed", detail=detail)
    return "cannot connect"
