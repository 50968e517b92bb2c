"""Sockets passed by systemd (socket activation) are found by address and kept for re-listening."""

from __future__ import annotations

import socket

from haproxy_py.proxy.config import ListenerConfig
from haproxy_py.proxy.listeners import Passed, bind_socket, passed_sockets
from haproxy_py.proxy.master import Group


def test_sockets_passed_to_another_process_are_ignored_and_the_variables_removed() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:tls", "HOME": "/"}
    assert passed_sockets(environ) == []
    assert environ == {"HOME": "/"}


def test_a_listener_gets_a_duplicate_of_the_passed_socket_for_its_address() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    host, port = sock.getsockname()
    passed = Passed([sock])
    try:
        first = bind_socket(host, port, passed)
        again = bind_socket(host, port, passed)  # after a drain closed the first: the same socket
        assert first.getsockname() == again.getsockname() == (host, port)
        assert first.fileno() != sock.fileno() != again.fileno()
        first.close()
        client = socket.create_connection((host, port), timeout=5)
        accepted, _ = again.accept()
        for sock_ in (accepted, client, again):
            sock_.close()
    finally:
        sock.close()
    assert passed.take(("127.0.0.1", 1)) is None


def test_workers_share_a_passed_socket_and_get_a_reuseport_group_otherwise() -> None:
    """A passed socket keeps its IP_TRANSPARENT only as systemd made it: every worker is
    handed that one socket (one accept queue); an address not passed gets a group."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    host, port = sock.getsockname()
    passed = Passed([sock])
    shared = Group.bind(ListenerConfig("web", host, port, 100), 2, passed=passed)
    own = Group.bind(ListenerConfig("own", host, 0, 100), 2, passed=passed)
    try:
        assert shared.bound == (host, port)
        assert len({s.fileno() for s in shared.sockets}) == 2
        client = socket.create_connection((host, port), timeout=5)
        shared.sockets[0].close()  # a worker's copy gone: the other still accepts the queue
        accepted, _ = shared.sockets[1].accept()
        accepted.close()
        client.close()
        assert own.bound[1] not in (0, port)
        assert [s.getsockname() for s in own.sockets] == [own.bound, own.bound]
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in own.sockets)
    finally:
        shared.close()
        own.close()
        sock.close()
