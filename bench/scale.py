"""The control plane at 10, 30 and 100 nodes (BGP mode), simulated: `python -m bench.scale`.

For each node count: a real 3-member etcd on loopback (`tests/support/etcd.py`), the real
`ha-controller` as a process of its own (so its CPU and memory are its alone), 1,000 VIPs,
and N simulated agents in `FLEET`-sized processes of their own (`python -m bench.scale
--fleet`, told on stdin which agent dies and which returns). A simulated agent is what a
real one is to etcd in BGP mode: a lease kept alive every TTL/4, its node record under it
(live, every pool up), written again only when something changes; its kernel, BIRD and
proxy are left out (the lab tests and `bench.bgp` cover those).

The controller must keep every node announcing (`min_announcers` = N), which costs nothing
while every node is ready. Measured per node count, in three windows of `--window` s:
* quiet (nothing changes), churn (every `CHURN_EVERY` s one agent dies; it registers again
  `BACK_AFTER` s later), and the same churn with a spare node whose backends are down: the
  minimum adds it for each lost node and drops it at the node's return, so each death and
  return needs the controller to write;
* etcd revisions per node per minute and per death and return, in each window;
* in the spare window, from a lease expiry (etcd deletes the node's record) to the
  controller's write of the spare's key, and from the node's return (its record written) to
  the next write: p50/p95/max, read from one etcd watch in this process (same clock);
* the controller's CPU (share of one core) and resident memory (max) in each window.

`--profile DIR` runs the controller under cProfile (`DIR/controller-<N>.prof`) and leaves
the results files alone; `--vips` and `--window` make a smaller run.

Results: `bench/results/scale.{md,json}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procfs
from haproxy_py.cluster.config import EtcdConfig
from haproxy_py.cluster.records import NodeRecord
from haproxy_py.cluster.store import LeaseLost, Store, StoreError
from tests.support.etcd import EtcdCluster

RESULTS = Path(__file__).resolve().parent / "results"
CLUSTER = "scale"
VIPS = 1000
TTL = 2
WINDOW = 60.0  # seconds of the quiet window and of the churn window (--window)
CHURN_EVERY = 3.0  # one agent dies this often during churn
FLEET = 25  # simulated agents per process
BACK_AFTER = 4.0  # and registers again this long after it died (its lease is gone by then)
SESSION_UP = 1.0  # seconds from a registration to its BGP session and BFD up
SPARE = "spare"  # the node of the last window: live, its backends down (ready 0 of 1)


def vips(count: int) -> list[str]:
    """`count` addresses in 198.18.0.0/15 (written to etcd only; no traffic is sent)."""
    return [f"198.{18 + i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(1, count + 1)]


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class SimAgent:
    """A node as etcd sees it in BGP mode: a lease kept alive and a record under it, written
    once at registration (the agent's first probes' verdict) and once more `SESSION_UP` s
    later, when its BGP session and BFD are up (`agent.bgpside.settled`)."""

    def __init__(self, etcd: EtcdConfig, name: str) -> None:
        self.store, self.name = Store(etcd, CLUSTER), name  # its own connection, as an agent's
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        while True:
            try:
                lease = await self._register()
                break
            except StoreError:  # etcd slow to answer under load: try again, as an agent does
                await asyncio.sleep(0.1)
        self.task = asyncio.create_task(self._keepalive(lease))

    async def _register(self) -> int:
        lease = (await self.store.grant_lease(TTL)).id
        await self._write(lease, {})
        return lease

    async def _write(self, lease: int, sessions: dict[str, str]) -> None:
        ready = 0 if self.name.startswith(SPARE) else 1  # a spare has its backends down
        record = NodeRecord(
            name=self.name, address="198.18.0.1", healthy=True, ready=ready, pools=1, bgp=sessions
        )
        await self.store.put(self.store.schema.node(self.name), record.to_json(), lease)

    async def _keepalive(self, lease: int) -> None:
        session_at: float | None = time.monotonic() + SESSION_UP
        while True:
            with contextlib.suppress(StoreError):  # keep trying, as an agent does
                try:
                    await self.store.keepalive(lease)
                    if session_at is not None and time.monotonic() >= session_at:
                        await self._write(lease, {"uplink": "Established, BFD Up"})
                        session_at = None
                except LeaseLost:  # it lapsed (a starved process): register again
                    lease = await self._register()
                    session_at = time.monotonic() + SESSION_UP
            await asyncio.sleep(TTL / 4)

    def die(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def close(self) -> None:
        self.die()
        await self.store.close()


@dataclass
class Watcher:
    """From a node's record deleted (its lease's expiry) or written again (its return) to the
    controller's next write under `announce/`, on this process's clock. Deaths and returns
    are paired with writes in order; one that no write follows within `BACK_AFTER` s is
    dropped (`unanswered`)."""

    store: Store
    pending: list[tuple[str, float]] = field(default_factory=list)  # ("expiry"|"return", t)
    expiry_to_write: list[float] = field(default_factory=list)
    return_to_write: list[float] = field(default_factory=list)
    unanswered: int = 0
    gone: set[str] = field(default_factory=set)  # records deleted, not written again yet

    async def run(self, revision: int) -> None:
        schema = self.store.schema
        async for event in self.store.watch(schema.prefix, revision + 1):
            now = time.monotonic()
            while self.pending and now - self.pending[0][1] > BACK_AFTER:
                self.pending.pop(0)
                self.unanswered += 1
            if event.key.startswith(schema.nodes_prefix):
                if event.key.endswith(SPARE):
                    continue
                if event.kind == "delete":
                    self.gone.add(event.key)
                    self.pending.append(("expiry", now))
                elif event.key in self.gone:  # its return (not its later session write)
                    self.gone.discard(event.key)
                    self.pending.append(("return", now))
            elif schema.announce_node(event.key) is not None and self.pending:
                kind, since = self.pending.pop(0)
                (self.expiry_to_write if kind == "expiry" else self.return_to_write).append(
                    now - since
                )


def controller_config(path: Path, endpoints: list[str], count: int, nodes: int) -> None:
    """Every node must announce (`min_announcers`): a spare steps in for a lost one."""
    vip_list = ", ".join(json.dumps(v) for v in vips(count))
    path.write_text(
        f'[node]\nname = "ctl"\naddress = "127.0.0.1"\n'
        f'[cluster]\nname = "{CLUSTER}"\nmode = "bgp"\nvips = [{vip_list}]\n'
        f"min_announcers = {nodes}\n"
        f"[etcd]\nendpoints = {json.dumps(endpoints)}\n"
        f'[controller]\nid = "ctl"\nmetrics = ""\n'
        f'[logging]\nlevel = "warning"\n'
    )


class Usage:
    """The controller's CPU (share of one core) and max RSS over a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ticks = procfs.cpu_ticks(pid)
        self.started = time.monotonic()
        self.rss = procfs.rss_kib([pid])

    def sample(self) -> None:
        self.rss = max(self.rss, procfs.rss_kib([self.pid]))

    def result(self) -> dict[str, float]:
        seconds = time.monotonic() - self.started
        ticks = procfs.cpu_ticks(self.pid) - self.ticks
        share = ticks / procfs.clock_ticks_per_second() / seconds
        return {"cpu_percent": round(100 * share, 1), "rss_mib": round(self.rss / 1024, 1)}


async def revision(store: Store) -> int:
    for _ in range(30):  # etcd slow to answer under load: ask again, for at most ~30 s
        with contextlib.suppress(StoreError):
            return (await store.get_prefix(store.schema.config))[1]
        await asyncio.sleep(0.1)
    raise SystemExit("etcd did not answer a read for 30 s")


class Fleet:
    """Simulated agents in a process of their own, so their keepalives do not wait on this
    process's watch (or on one another beyond `FLEET`)."""

    def __init__(self, endpoints: list[str], names: list[str]) -> None:
        argv = [sys.executable, "-m", "bench.scale", "--fleet", ",".join(endpoints), *names]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.names = names

    def ready(self) -> None:
        """Wait for the fleet's "ready" (the store's log lines may come first)."""
        assert self.proc.stdout is not None
        line = ""
        for line in self.proc.stdout:
            if line.strip() == "ready":
                return
        raise SystemExit(f"an agent fleet did not start; it said last: {line!r}")

    def tell(self, verb: str, name: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{verb} {name}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


async def fleet_main(endpoints: list[str], names: list[str]) -> None:
    """The `--fleet` process: start the agents, then obey `die NAME` / `start NAME`."""
    etcd = EtcdConfig(endpoints=tuple(endpoints), timeout=1.0)
    agents = {n: SimAgent(etcd, n) for n in names}
    for agent in agents.values():
        await agent.start()
    print("ready", flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        verb, name = line.split()
        if verb == "die":
            agents[name].die()
        else:
            await agents[name].start()


async def window(
    store: Store, usage: Usage, seconds: float, nodes: int, fleets: list[Fleet] | None
) -> dict[str, float]:
    """Run one window (with churn when `fleets` are given); revisions per node per minute
    and per death and return, counted once the last return has settled."""
    start = await revision(store)
    ends = time.monotonic() + seconds
    victim = 0
    pending: list[asyncio.Task[None]] = []
    while time.monotonic() < ends:
        usage.sample()
        if fleets is not None:
            fleet = fleets[victim % len(fleets)]
            name = fleet.names[(victim // len(fleets)) % len(fleet.names)]
            victim += 1
            fleet.tell("die", name)

            async def back(f: Fleet = fleet, n: str = name) -> None:
                await asyncio.sleep(BACK_AFTER)
                f.tell("start", n)

            pending.append(asyncio.create_task(back()))
            await asyncio.sleep(CHURN_EVERY)
        else:
            await asyncio.sleep(1.0)
    await asyncio.gather(*pending)
    if pending:
        await asyncio.sleep(TTL)  # the last agent's registration and the controller's answer
    delta = await revision(store) - start
    return {
        "revisions": delta,
        "deaths": victim,
        "revisions_per_death": round(delta / victim, 2) if victim else 0.0,
        "revisions_per_node_minute": round(delta / nodes / (seconds / 60), 3),
        **usage.result(),
    }


async def converged(store: Store, nodes: int, want: int, limit: float = 300.0) -> float:
    """Seconds until every node's announce key lists all `want` VIPs."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            kvs, _ = await store.get_prefix(store.schema.announce_prefix)
        except StoreError:  # slow under load: look again
            continue
        counts = [len(json.loads(kv.value).get("vips", [])) for kv in kvs]
        if len(counts) == nodes and all(c == want for c in counts):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise SystemExit(f"the controller did not announce every VIP from {nodes} nodes in {limit} s")


async def keyed(store: Store, node: str, limit: float = 60.0) -> None:
    """Wait until `node` has an announce key (the controller saw it)."""
    ends = time.monotonic() + limit
    while time.monotonic() < ends:
        with contextlib.suppress(StoreError):  # slow under load: look again
            if await store.get(store.schema.announce(node)) is not None:
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"the controller wrote no announce key for {node} in {limit} s")


async def one_run(
    endpoints: list[str], controller: int, nodes: int, count: int, seconds: float
) -> dict[str, Any]:
    store = Store(EtcdConfig(endpoints=tuple(endpoints), timeout=1.0), CLUSTER)
    names = [f"n{i:03d}" for i in range(nodes)]
    fleets = [Fleet(endpoints, names[i : i + FLEET]) for i in range(0, nodes, FLEET)]
    try:
        for fleet in fleets:
            await asyncio.to_thread(fleet.ready)
        took = await converged(store, nodes, count)
        await asyncio.sleep(SESSION_UP + TTL)  # the agents' session writes: before the quiet
        quiet = await window(store, Usage(controller), seconds, nodes, None)
        churn = await window(store, Usage(controller), seconds, nodes, fleets)
        # the spare: every death now changes its answer (the minimum is every node)
        fleets.append(Fleet(endpoints, [SPARE]))
        await asyncio.to_thread(fleets[-1].ready)
        await keyed(store, SPARE)
        watcher = Watcher(store)
        watch = asyncio.create_task(watcher.run(await revision(store)))
        spare = await window(store, Usage(controller), seconds, nodes, fleets[:-1])
        watch.cancel()
        e, r = watcher.expiry_to_write, watcher.return_to_write
        return {
            "nodes": nodes,
            "vips": count,
            "converged_s": round(took, 2),
            "quiet": quiet,
            "churn": churn,
            "spare": {**spare, "unanswered": watcher.unanswered},
            "expiry_to_write_ms": summary(e),
            "return_to_write_ms": summary(r),
        }
    finally:
        for fleet in fleets:
            fleet.stop()
        await store.close()


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 1) if ms else float("nan"),
        "p95": round(p(ms, 0.95), 1),
        "max": round(max(ms), 1) if ms else float("nan"),
    }


def measure(nodes: int, count: int, seconds: float, profile: Path | None) -> dict[str, Any]:
    """One node count on a fresh etcd; with `profile`, the controller runs under cProfile and
    its stats are written to `profile`."""
    with EtcdCluster.start(size=3) as etcd:
        work = Path(tempfile.mkdtemp(prefix="hscale-"))
        try:
            config = work / "ctl.toml"
            controller_config(config, etcd.endpoints, count, nodes)
            argv = ["-m", "controller", "--config", str(config)]
            if profile is not None:
                argv = ["-m", "cProfile", "-o", str(profile), *argv]
            log = (work / "controller.log").open("w")
            proc = subprocess.Popen([sys.executable, *argv], stderr=log, stdout=log)
            try:
                return asyncio.run(one_run(etcd.endpoints, proc.pid, nodes, count, seconds))
            finally:
                proc.terminate()
                proc.wait(20)
                log.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict[str, Any]], load: tuple[float, float], seconds: float) -> str:
    count = rows[0]["vips"] if rows else VIPS
    windows = ("quiet", "churn", "spare")
    lines = [
        "# The control plane at 10, 30 and 100 nodes (BGP mode, simulated agents)",
        "",
        f"`python -m bench.scale`: a real 3-member etcd on loopback, the real `ha-controller`, "
        f"{count} VIPs, N simulated agents (lease TTL {TTL} s, keepalive every {TTL / 4:g} s, "
        "record written at registration and again when its BGP session is up, each agent on "
        f"its own etcd connection, {FLEET} agents per process), `min_announcers` = N. "
        "Three windows of "
        f"{seconds:g} s: quiet; churn (one agent dies every {CHURN_EVERY:g} s and registers "
        f"again {BACK_AFTER:g} s later); the same churn with a spare node whose backends are "
        "down, which the minimum adds for each lost node and drops at its return, so every "
        "death and return needs the controller to write. "
        f"Load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (2 cores, shared).",
        "",
        "| nodes | converged | revisions/node/min quiet / churn | revisions per death+return "
        "churn / spare | expiry -> spare's key p50/p95/max ms | return -> spare's key "
        "p50/p95/max ms | controller CPU quiet / churn / spare | RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, b = r["expiry_to_write_ms"], r["return_to_write_ms"]
        churn, spare = r["churn"], r["spare"]
        cpu = " / ".join(f"{r[w]['cpu_percent']} %" for w in windows)
        lines.append(
            f"| {r['nodes']} | {r['converged_s']} s "
            f"| {r['quiet']['revisions_per_node_minute']} / {churn['revisions_per_node_minute']} "
            f"| {churn['revisions_per_death']} / {spare['revisions_per_death']} "
            f"| {e['p50']}/{e['p95']}/{e['max']} (n={e['n']}) "
            f"| {b['p50']}/{b['p95']}/{b['max']} (n={b['n']}) "
            f"| {cpu} "
            f"| {max(r[w]['rss_mib'] for w in windows)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, action="append", help="node counts (10, 30, 100)")
    parser.add_argument("--window", type=float, default=WINDOW, help="seconds of each window")
    parser.add_argument("--vips", type=int, default=VIPS, help="VIPs in the cluster")
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: run the controller under cProfile, stats in <dir>/controller-<N>.prof; "
        "the results files are left as they are",
    )
    parser.add_argument("--fleet", help=argparse.SUPPRESS)  # endpoints: run agents (internal)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fleet:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(fleet_main(args.fleet.split(","), args.names))
        return
    before = os.getloadavg()[0]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(n, args.vips, args.window, args.profile and args.profile / f"controller-{n}.prof")
        for n in (args.nodes or [10, 30, 100])
    ]
    after = os.getloadavg()[0]
    if args.profile is not None:
        sys.stdout.write(report(rows, (before, after), args.window))
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(
        json.dumps({"load": [before, after], "rows": rows}, indent=2) + "\n"
    )
    (RESULTS / "scale.md").write_text(report(rows, (before, after), args.window))
    sys.stdout.write(report(rows, (before, after), args.window))


if __name__ == "__main__":
    main()
