"""The benchmark's floor target relays bytes both ways, intact, and passes the close on."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import free_port

RELAY = Path(__file__).parents[3] / "bench" / "barerelay.py"


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def relay() -> Iterator[int]:
    backend = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    backend.daemon_threads = True
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(RELAY), str(port), f"127.0.0.1:{backend.server_address[1]}"]
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError("the relay exited") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


def test_bytes_come_back_intact_and_a_close_reaches_the_client(relay: int) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one read
    with socket.create_connection(("127.0.0.1", relay), timeout=10) as client:
        client.sendall(b"hello")
        assert client.recv(5) == b"hello"
        client.sendall(payload)
        received = bytearray()
        while len(received) < len(payload):
            received += client.recv(65536)
        assert received == payload
        client.shutdown(socket.SHUT_WR)  # the relay closes both of its sockets
        assert client.recv(1) == b""
