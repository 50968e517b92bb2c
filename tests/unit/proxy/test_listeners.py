"""Sockets passed by systemd (socket activation) are found by address and kept for re-listening."""

from __future__ import annotations

import socket

from haproxy_py.proxy.listeners import Passed, bind_socket, passed_sockets


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
