"""Who may change a node through the admin API (pure decisions; files in the integration tests)."""

from __future__ import annotations

from haproxy_py.proxy.adminauth import AdminAuth, Peer, decide, peer_of

TOKEN = "0123456789abcdef0123456789abcdef"


def test_without_tokens_or_names_whoever_reaches_the_listener_may_change() -> None:
    assert decide(AdminAuth(), "POST", None, None) == (None, None)


def test_reads_stay_open_changes_need_a_token_or_a_named_certificate() -> None:
    auth = AdminAuth(tokens={"agent": TOKEN}, client_names=frozenset({"operator-alice"}))
    assert decide(auth, "GET", None, None) == (None, None)
    assert decide(auth, "POST", f"Bearer {TOKEN}", None) == ("token agent", None)
    assert decide(auth, "POST", f"bearer {TOKEN}", None) == ("token agent", None)
    assert decide(auth, "POST", None, Peer("operator-alice", 7)) == ("operator-alice", None)
    who, refused = decide(auth, "POST", "Bearer nope", Peer("operator-mallory", 8))
    assert who == "operator-mallory"
    assert refused == "changes need a bearer token or a client certificate named in client_names"
    assert decide(auth, "POST", f"Basic {TOKEN}", None)[1] is not None


def test_the_certificate_name_and_serial_come_from_the_peer_certificate() -> None:
    cert = {
        "subject": ((("organizationName", "x"),), (("commonName", "agent-node1"),)),
        "serialNumber": "1A2B",
    }
    assert peer_of(cert) == Peer("agent-node1", 0x1A2B)
    assert peer_of(None) is None and peer_of({}) is None
