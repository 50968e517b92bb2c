"""Certificate expiry as a gauge: read from the file at scrape time, renewals seen at once."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from haproxy_py import certmetrics, pki
from haproxy_py.metrics import Registry


def test_expiry_of_each_file_in_use_and_a_renewal(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    cert = pki.issue(tmp_path, "node-a", client=True).cert
    expected = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    registry = Registry("haproxy_py_agent")
    files: list[Path | None] = [cert, None, tmp_path / "missing.crt", cert]
    certmetrics.register(registry, lambda: files)
    text = registry.render()
    name = "haproxy_py_agent_certificate_expiry_timestamp_seconds"
    samples = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert samples == [f'{name}{{file="{cert}",subject="CN=node-a"}} {int(expected)}']

    renewed = pki.issue(tmp_path, "node-b", client=True).cert
    cert.write_bytes(renewed.read_bytes())
    os.utime(cert, (1, 1))  # a different mtime, as a renewal brings
    assert 'subject="CN=node-b"' in registry.render()
