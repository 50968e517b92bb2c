"""The admin API's request check (review M4): changes only for this listener, never cross-site."""

from __future__ import annotations

import pytest

from haproxy_py.proxy.admin import allowed_hosts, refusal

HOSTS = allowed_hosts("127.0.0.1", 9901)


def test_loopback_listener_answers_to_its_address_and_localhost() -> None:
    assert allowed_hosts("127.0.0.1", 9901) == {"127.0.0.1:9901", "localhost:9901"}
    assert allowed_hosts("::1", 9901) == {"[::1]:9901", "localhost:9901"}
    assert allowed_hosts("198.18.0.11", 9901) == {"198.18.0.11:9901"}
    assert allowed_hosts("0.0.0.0", 9901) is None  # TLS with client certificates guards it


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "127.0.0.1:9901"},  # the agent, curl
        {"Host": "localhost:9901", "Origin": "http://localhost:9901"},  # the page itself
        {"Host": "LOCALHOST:9901", "Sec-Fetch-Site": "same-origin"},
    ],
)
def test_same_site_changes_pass(headers: dict[str, str]) -> None:
    assert refusal("POST", headers, HOSTS) is None


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Host": "attacker.example:9901"}, "Host 'attacker.example:9901' is not"),  # rebinding
        ({}, "Host '' is not"),
        ({"Host": "127.0.0.1:9901", "Origin": "http://127.0.0.2:18999"}, "Origin"),  # CSRF
        ({"Host": "127.0.0.1:9901", "Origin": "null"}, "Origin 'null'"),
        ({"Host": "127.0.0.1:9901", "Sec-Fetch-Site": "cross-site"}, "cross-site"),
    ],
)
def test_foreign_changes_are_refused(headers: dict[str, str], reason: str) -> None:
    found = refusal("POST", headers, HOSTS)
    assert found is not None and reason in found


def test_reads_are_not_checked_and_wildcards_check_origin_only() -> None:
    assert refusal("GET", {"Host": "attacker.example"}, HOSTS) is None
    assert refusal("POST", {"Host": "node1.example:9901"}, None) is None
    assert refusal("POST", {"Host": "node1:9901", "Origin": "http://evil:1"}, None) is not None
