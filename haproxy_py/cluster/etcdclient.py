"""aetcd's client, built the way the store needs it, and the translations to and from it.

With `store` and `maintenance`, the only modules that import aetcd. `Client`
dials a TLS channel with client certificates (aetcd itself builds plaintext
ones only); the functions turn our values into aetcd's (`build_compare`,
`build_op`) and aetcd's into ours (`key_value`, `error_text`).
"""

from __future__ import annotations

import operator
import os
from typing import Any

# gRPC's C core would print TLS failures to stderr in its own words; the store reports
# them in ours (set before aetcd loads gRPC; GRPC_VERBOSITY in the environment still wins).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import aetcd
import grpc
from aetcd import rpc, watcher

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import KeyValue
from haproxy_py.cluster.storeapi import Compare, Op, Put
from haproxy_py.cluster.storeerrors import StoreError


class Client(aetcd.Client):
    """aetcd's client on a channel we build: TLS with client certificates, any endpoint.

    aetcd only builds plaintext channels; this replaces its `connect()` with one
    that builds the channel from our credentials and sets the same stubs.
    """

    def __init__(
        self, target: str, credentials: grpc.ChannelCredentials | None, timeout: float
    ) -> None:
        super().__init__(timeout=timeout)  # type: ignore[arg-type,unused-ignore]  # float deadlines work
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = [
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            # gRPC's default reconnect backoff grows to 120 s: a restarted etcd would be
            # ignored for minutes. Retry at least every second instead.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if self._credentials is None:
            self.channel = rpc.insecure_channel(self._target, options=options)
        else:
            self.channel = rpc.secure_channel(self._target, self._credentials, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout)
        self._connected.set()


def tls_stamp(config: EtcdConfig) -> tuple[tuple[int, int, int], ...]:
    """What identifies the TLS files' current contents: (inode, size, mtime) of each."""
    stamps = []
    for path in (config.cacert, config.cert, config.key):
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else (0, 0, 0))
    return tuple(stamps)


def credentials(config: EtcdConfig) -> grpc.ChannelCredentials | None:
    if not config.tls:
        return None
    try:
        root = config.cacert.read_bytes() if config.cacert else None
        key = config.key.read_bytes() if config.key else None
        cert = config.cert.read_bytes() if config.cert else None
    except OSError as exc:
        raise StoreError(f"cannot read etcd TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


def key_value(raw: Any) -> KeyValue:
    return KeyValue(
        key=raw.key.decode(errors="replace"),
        value=bytes(raw.value),
        create_revision=raw.create_revision,
        mod_revision=raw.mod_revision,
        lease=raw.lease,
    )


def error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


_OPERATORS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}


def build_compare(t: Any, compare: Compare) -> Any:
    """aetcd builds a compare from `t.<target>(key) <op> value`."""
    target = getattr(t, compare.target)(compare.key.encode())
    return _OPERATORS[compare.op](target, compare.value)


def build_op(t: Any, op: Op) -> Any:
    if isinstance(op, Put):
        return t.put(op.key.encode(), op.value, lease=op.lease or None)
    return t.delete(op.key.encode())
