"""The control-socket client against a real BIRD (static routes only: it touches no route here)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_py.cluster import bird, birdconf

CONFIG = """router id 198.18.5.21;
protocol device { scan time 10; }
protocol static vips {
  ipv4;
  check link;
  include "%s";  # BIRD takes `include` only at the start of a line
}
"""


def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def running_bird(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    announce = tmp_path / "announce.conf"
    announce.write_text(birdconf.announce_file([], "hbgtest0"))
    conf = tmp_path / "bird.conf"
    conf.write_text(CONFIG % announce)
    sock = tmp_path / "bird.ctl"
    proc = subprocess.Popen(["bird", "-f", "-c", str(conf), "-s", str(sock)])
    try:
        # The socket's file appears at bind(), before BIRD listens: wait for a connection.
        for _ in range(200):
            if accepts(sock) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert accepts(sock), "bird did not start"
        yield str(sock), announce
    finally:
        proc.kill()
        proc.wait(5)


async def test_configure_loads_new_routes_and_show_static_lists_them(
    running_bird: tuple[str, Path],
) -> None:
    sock, announce = running_bird
    control = bird.BirdControl(sock)
    try:
        assert bird.static_routes(await control.command("show static vips")) == {}
        announce.write_text(birdconf.announce_file(["198.18.5.100", "198.18.5.101"], "hbgtest0"))
        assert "Reconfigured" in await control.configure()
        routes = bird.static_routes(await control.command("show static vips"))
        # The live link does not exist here: configured, but dormant (not announced).
        assert routes == {"198.18.5.100/32": False, "198.18.5.101/32": False}
    finally:
        await control.close()


async def test_a_broken_file_is_refused_and_the_old_routes_stay(
    running_bird: tuple[str, Path],
) -> None:
    sock, announce = running_bird
    control = bird.BirdControl(sock)
    try:
        announce.write_text(birdconf.announce_file(["198.18.5.100"], "hbgtest0"))
        await control.configure()
        announce.write_text("route 198.18.5.100/32 via")
        with pytest.raises(bird.BirdError, match="syntax error"):
            await control.configure()
        routes = await control.command("show static vips")
        assert set(bird.static_routes(routes)) == {"198.18.5.100/32"}
    finally:
        await control.close()


async def test_a_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    control = bird.BirdControl(str(tmp_path / "none.ctl"))
    with pytest.raises(bird.BirdError, match="is bird running"):
        await control.command("show status")


async def test_the_client_reconnects_after_bird_restarts(running_bird: tuple[str, Path]) -> None:
    sock, _ = running_bird
    control = bird.BirdControl(sock)
    try:
        await control.command("show status")
        assert control._conn is not None
        _, writer = control._conn
        writer.close()  # as if BIRD had gone away: the next command opens a new connection
        with pytest.raises(bird.BirdError):
            await control.command("show status")
        assert (await control.command("show status")).code == 13
    finally:
        await control.close()
