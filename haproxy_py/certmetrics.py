"""Certificate expiry as a gauge, for every daemon that holds certificates.

`<prefix>_certificate_expiry_timestamp_seconds{file, subject}`: the notAfter
of each certificate file the daemon uses (etcd client certificates; the
proxy's listener and admin certificates), in Unix seconds, read when
`/metrics` is scraped so a renewed file shows at once. The alert rule
(monitoring/prometheus) fires 14 days ahead. A file that cannot be read is
left out and logged once; the daemon keeps the certificate it loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from haproxy_py.metrics import Registry, Sample

if TYPE_CHECKING:
    from haproxy_py.proxy.config import ProxyConfig

log = structlog.get_logger(__name__)
_cache: dict[Path, tuple[float, float, str]] = {}  # path -> (mtime, not after, subject)
_reported: set[Path] = set()


def expiry(path: Path) -> tuple[float, str] | None:
    """(notAfter as Unix time, subject) of a PEM certificate file; None if unreadable."""
    from cryptography import x509  # at scrape time only: the daemons load it for TLS anyway

    try:
        mtime = path.stat().st_mtime
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1], cached[2]
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        if path not in _reported:
            _reported.add(path)
            log.warning("certificate expiry not exported", file=str(path), error=str(exc))
        return None
    _reported.discard(path)
    found = (cert.not_valid_after_utc.timestamp(), cert.subject.rfc4514_string())
    _cache[path] = (mtime, *found)
    return found


def register(registry: Registry, files: Callable[[], Iterable[Path | None]]) -> None:
    """Add the gauge to `registry`; `files` names the certificates in use at scrape time."""

    def collect() -> Iterable[Sample]:
        samples = []
        for path in dict.fromkeys(p for p in files() if p is not None):
            found = expiry(path)
            if found is not None:
                samples.append(({"file": str(path), "subject": found[1]}, found[0]))
        return samples

    registry.gauge(
        "certificate_expiry_timestamp_seconds",
        "notAfter of each certificate file in use, Unix seconds",
        collect,
    )


def proxy_files(config: ProxyConfig) -> list[Path]:
    """The certificates a proxy config serves: every listener's, and the admin API's."""
    files = [c.cert for lst in config.listeners if lst.tls for c in lst.tls.certificates]
    if config.admin.tls is not None:
        files.append(config.admin.tls.certificate.cert)
    return files
