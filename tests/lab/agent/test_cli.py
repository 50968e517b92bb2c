"""`ha-agent` as an operator runs it: one-line errors for expected failures, exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import BinaryIO

import pytest

from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.store import Store
from tests.lab.agent.cluster import BIN, bridge_etcd
from tests.lab.agent.support import plumbing
from tests.support.etcd import free_ports
from tests.support.wait import eventually_async

pytestmark = pytest.mark.lab


def config(path: Path, endpoint: str, interface: str = "eth0") -> Path:
    path.write_text(
        f"""
[node]
name = "n1"
interface = "{interface}"
[cluster]
name = "cli"
[etcd]
endpoints = ["{endpoint}"]
[agent]
metrics_bind = ""
allowed_vips = ["198.18.254.100"]
"""
    )
    return path


def errors_file(cfg: Path) -> BinaryIO:
    return cfg.with_suffix(".err").open("wb")


async def agent_in(netns: str, cfg: Path, *prefix: str) -> asyncio.subprocess.Process:
    """ha-agent in `netns`, its stderr going to `<config>.err` (read back by `finish`)."""
    with errors_file(cfg) as err:
        return await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            *prefix,
            str(BIN / "ha-agent"),
            "--config",
            str(cfg),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )


async def finish(proc: asyncio.subprocess.Process, cfg: Path, limit: float) -> str:
    """The agent's stderr once it exits; killed (and the test failed) after `limit` s."""
    try:
        await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        text = cfg.with_suffix(".err").read_text()
        raise AssertionError(f"ha-agent still running after {limit} s:\n{text}") from None
    return cfg.with_suffix(".err").read_text()


async def fails_with(proc: asyncio.subprocess.Process, cfg: Path, code: int) -> str:
    text = await finish(proc, cfg, 60)
    assert proc.returncode == code, text
    assert "Traceback" not in text
    return text


async def test_expected_failures_are_one_line(tmp_path: Path) -> None:
    with plumbing(tmp_path, "hvc") as (lab, net):
        lab.bridge()
        host = lab.add_host("n1", f"{net}.11/24")
        (nobody,) = free_ports(1)  # nothing listens there inside the namespace
        endpoint = f"127.0.0.1:{nobody}"

        cfg = config(tmp_path / "a.toml", endpoint, "eth9")
        err = await fails_with(await agent_in(host.netns, cfg), cfg, 1)
        last = err.strip().splitlines()[-1]  # after the `starting` line
        assert last.startswith("ha-agent: interface 'eth9' not found in this network namespace")
        assert "set [node] interface" in err

        # etcd unreachable at start is not fatal: the agent waits for it in-process
        cfg = config(tmp_path / "b.toml", endpoint)
        proc = await agent_in(host.netns, cfg)
        log = cfg.with_suffix(".err")
        await eventually_async(lambda: "starting" in log.read_text(), 60, "the agent starting")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3)
        assert proc.returncode is None, "the agent must not exit while etcd is down"
        proc.send_signal(signal.SIGTERM)
        err = await finish(proc, cfg, 15)
        assert proc.returncode == 0 and "Traceback" not in err, err

        no_caps = ("setpriv", "--bounding-set=-net_admin,-net_raw")
        cfg = config(tmp_path / "c.toml", endpoint)
        err = await fails_with(await agent_in(host.netns, cfg, *no_caps), cfg, 1)
        assert err.startswith("ha-agent: missing CAP_NET_ADMIN and CAP_NET_RAW")
        assert "run it as root" in err

        cfg = tmp_path / "d.toml"
        cfg.write_text("[agent]\nhealth_fall = 0\n")
        err = await fails_with(await agent_in(host.netns, cfg), cfg, 2)
        assert err.strip() == (
            f"ha-agent: {tmp_path / 'd.toml'}: agent.health_fall: expected an integer >= 1, got 0"
        )

        # fail closed: without a list of its own the agent would hold whatever etcd names
        cfg = config(tmp_path / "e.toml", endpoint)
        cfg.write_text(cfg.read_text().replace('allowed_vips = ["198.18.254.100"]\n', ""))
        err = await fails_with(await agent_in(host.netns, cfg), cfg, 2)
        assert err.startswith(f"ha-agent: {cfg}: agent.allowed_vips: missing:"), err
        assert err.count("\n") == 1, err


async def test_sigterm_releases_and_exits_zero(tmp_path: Path) -> None:
    with plumbing(tmp_path, "hvc") as (lab, net):
        lab.bridge(f"{net}.1/24")
        host = lab.add_host("n1", f"{net}.11/24")
        etcd = bridge_etcd(f"{net}.1", tmp_path / "etcd")
        etcd.spawn()
        store = Store(EtcdConfig((etcd.endpoint,), timeout=2.0), "cli")
        proc = None
        try:
            etcd.wait_healthy()
            cfg = config(tmp_path / "n1.toml", etcd.endpoint)
            proc = await agent_in(host.netns, cfg)

            async def registered() -> bool:
                return await store.get(store.schema.node("n1")) is not None

            await eventually_async(registered, 60, "nodes/n1 in etcd", every=0.05)
            proc.send_signal(signal.SIGTERM)
            err = await finish(proc, cfg, 30)
            assert proc.returncode == 0, err
            assert "agent stopped" in err
            assert await store.get(store.schema.node("n1")) is None
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            await store.close()
            etcd.kill()
