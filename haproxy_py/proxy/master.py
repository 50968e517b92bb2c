"""The master process: config, admin API, health checks and N supervised worker processes.

The master binds every listener once per worker, as one SO_REUSEPORT group
(so the kernel spreads new connections evenly over the workers by their
address hash, where one shared accept queue would hand most of them to
whichever worker is least busy at that instant), and keeps those sockets
open for as long as the listener exists. Each worker is handed its own socket
of each group: a worker that crashes leaves its socket, and the connections
waiting in its queue, with the master, and its replacement takes the same
socket again; a reload hands only new listeners' sockets over. So neither a
crash nor a reload resets a connection anywhere, and binding (a privileged
port, an address not here yet) is done and checked once.

A listener whose socket systemd passed (socket activation, `listeners.Passed`)
is the exception: every worker gets that one socket and they share its accept
queue. Only systemd can set its IP_TRANSPARENT, which the accepted connections
inherit and which lets a worker send its 1001 after the VIP left this node
(a group bound here would need CAP_NET_RAW for that); the master keeps the
passed socket across drains and worker restarts.

What the workers share goes through the master: its health checks' verdicts
are pushed to every worker (and the workers' passive results come back to be
judged), the connection counts that least_conn and max_conns read live in one
shared-memory table (`shared.CountTable`), `/status` and `/metrics` sum the
workers' `TrafficReport`s, and reload, drain and `drain_address` are sent to
every worker and answered by each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import structlog

from haproxy_py.cluster.config import LoggingConfig
from haproxy_py.cluster.tasks import supervised
from haproxy_py.proxy import control
from haproxy_py.proxy.addresshold import AddressHold
from haproxy_py.proxy.admin import AdminServer, ListenerState
from haproxy_py.proxy.config import ListenerConfig, ProxyConfig
from haproxy_py.proxy.control import Channel, Message
from haproxy_py.proxy.listeners import (
    PASSED,
    AddressDrain,
    IPAddress,
    Passed,
    bind_socket,
    passed_socket,
    socket_kind,
)
from haproxy_py.proxy.report import TrafficReport, merge
from haproxy_py.proxy.runtime import Runtime
from haproxy_py.proxy.server import admin_as_running
from haproxy_py.proxy.shared import CountTable, RowMap

log = structlog.get_logger(__name__)

TABLE_ROWS = 4096  # backend servers a master can count over its life (reloads included)
RESTART_AFTER = 1.0  # at least this long between two starts of one worker slot
START_TIMEOUT = 60.0  # a worker's imports on a loaded machine
POLL_EVERY = 1.0  # each worker's report is fetched this often (and on every scrape) ...
HUNG_AFTER = 10.0  # ... and a worker that answered none for this long is killed and restarted
DEFAULT_LOGGING = LoggingConfig("info", "auto")  # the workers log as the master does


def worker_count(configured: int | None) -> int:
    """`workers`: the configured number, or ("auto") the CPUs this process may run on."""
    return configured if configured is not None else len(os.sched_getaffinity(0))


@dataclass
class Group:
    """One listener: its config and one listening socket per worker (the SO_REUSEPORT group)."""

    config: ListenerConfig
    sockets: list[socket.socket]
    bound: tuple[str, int]

    @classmethod
    def bind(
        cls, config: ListenerConfig, count: int, port: int | None = None, passed: Passed = PASSED
    ) -> Group:
        """A socket per worker; the one systemd passed, shared by all, if it passed one."""
        inherited = passed_socket(config.host, port or config.port, passed)
        if inherited is not None:
            inherited.listen(1024)
            shared = [inherited, *(inherited.dup() for _ in range(count - 1))]
            return cls(config, shared, inherited.getsockname()[:2])
        sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = bind_socket(config.host, port or config.port, passed, reuse_port=True)
                sockets.append(sock)
                sock.listen(1024)
                port = sock.getsockname()[1]  # port 0: the others join the first one's
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return cls(config, sockets, sockets[0].getsockname()[:2])

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def for_worker(self) -> ListenerConfig:
        """The listener as workers see it: port 0 resolved, so their sockets are found."""
        return dataclasses.replace(self.config, port=self.bound[1])


@dataclass
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    ready: bool = False
    started: float = 0.0
    restarts: int = 0
    last: TrafficReport = field(default_factory=TrafficReport)  # last report it sent
    answered: float = 0.0  # monotonic time of its last report


class Master:
    """Serves `config` with `workers` worker processes (see the module doc)."""

    def __init__(
        self,
        config: ProxyConfig,
        node_name: str,
        workers: int,
        logging: LoggingConfig = DEFAULT_LOGGING,
    ) -> None:
        self.config = config
        self.node_name = node_name
        self.logging = logging
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self.table = CountTable.create(TABLE_ROWS, workers)
        self.rows = RowMap(TABLE_ROWS)
        self.runtime = self._runtime(config, 1, None)
        self.groups: dict[str, Group] = {}
        self.admin = AdminServer(self)
        self.draining = False
        self.stopping = False
        self.started_at = time.time()
        self.retired = TrafficReport(processes=0)  # counters of workers that died
        self._drain_task: asyncio.Task[bool] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.admin.registry.gauge(
            "worker_connections",
            "Client connections open, by worker process (how evenly the kernel spreads them)",
            lambda: [
                ({"worker": str(s.index)}, sum(n for _, n in s.last.listener_connections))
                for s in self.slots
            ],
        )
        self.admin.registry.counter(
            "worker_restarts_total", "Worker processes restarted after they exited"
        ).collect = lambda: [({}, sum(s.restarts for s in self.slots))]

    # -- life
    async def start(self) -> None:
        """Bind, start the checks and every worker, then the admin API; OSError if a bind fails."""
        try:
            for lc in self.config.listeners:
                self.groups[lc.name] = Group.bind(lc, len(self.slots))
            self.runtime.start()
            await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
            await self.admin.start()
            poll = asyncio.get_running_loop().create_task(supervised("poll workers", self._poll))
            self._tasks.add(poll)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "proxy started",
            node=self.node_name,
            workers=len(self.slots),
            listeners={name: "{}:{}".format(*g.bound) for name, g in self.groups.items()},
            admin="{}:{}".format(*self.admin.address),
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    async def stop(self) -> None:
        """Stop the workers now (their connections close) and everything here."""
        self.stopping = True
        await asyncio.gather(*(self._stop_worker(slot) for slot in self.slots))
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        await self.runtime.stop()
        await self.admin.stop()
        for group in self.groups.values():
            group.close()
        log.info("proxy stopped", node=self.node_name)

    async def _stop_worker(self, slot: WorkerSlot) -> None:
        process = slot.process
        if process is None or process.returncode is not None:
            return
        if slot.channel is not None and not slot.channel.closed:
            slot.channel.send({"op": "stop"})
        try:
            async with asyncio.timeout(5.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    # -- workers
    def _worker_config(self) -> ProxyConfig:
        listeners = tuple(self.groups[lc.name].for_worker() for lc in self.config.listeners)
        return dataclasses.replace(self.config, listeners=listeners)

    def _health(self) -> dict[tuple[str, str], bool]:
        return {
            (b.name, s.address): s.up for b in self.runtime.backends.values() for s in b.servers
        }

    def _sockets_of(self, slot: WorkerSlot, names: list[str]) -> tuple[list[object], list[int]]:
        groups = [self.groups[name] for name in names if self.groups[name].sockets]
        keys: list[object] = [(g.config.host, g.bound[1]) for g in groups]
        return keys, [g.sockets[slot.index].fileno() for g in groups]

    async def _spawn(self, slot: WorkerSlot) -> None:
        ours, theirs = control.pair()
        slot.started = time.monotonic()
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not the working directory's package: the one the master runs
            "-m",
            "haproxy_py.proxy.worker",
            str(theirs.fileno()),
            self.logging.level,
            self.logging.format,
            str(slot.index),
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        slot.channel = Channel(ours, self._from_worker(slot), lambda: None)
        keys, fds = self._sockets_of(slot, list(self.groups))
        reply = await slot.channel.call(
            "start",
            [self.table.fd, *fds],
            limit=START_TIMEOUT,
            index=slot.index,
            node=self.node_name,
            config=self._worker_config(),
            table_rows=self.table.rows,
            table_columns=self.table.columns,
            rows=self._rows(),
            health=self._health(),
            sockets=keys,
        )
        if "error" in reply:
            raise OSError(0, f"worker {slot.index} did not start: {reply['error']}")
        slot.ready = True
        watch = asyncio.get_running_loop().create_task(self._watch(slot, slot.process))
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)

    async def _watch(self, slot: WorkerSlot, process: asyncio.subprocess.Process) -> None:
        """Restart a worker that exits while the master runs; the others are untouched."""
        code = await process.wait()
        slot.ready = False
        if slot.channel is not None:
            slot.channel.close()
        if self.stopping:
            return
        self.retired = merge([self.retired, slot.last.without_gauges()])
        slot.last = TrafficReport(processes=0)
        self.table.zero_column(slot.index)  # its connections died with it
        if self.draining:  # a drained worker may end (SIGTERM reached it too); undrain restarts it
            log.info("worker exited while draining", worker=slot.index, code=code)
            return
        log.error("worker exited; restarting it", worker=slot.index, pid=process.pid, code=code)
        slot.restarts += 1
        await asyncio.sleep(max(0.0, slot.started + RESTART_AFTER - time.monotonic()))
        await self._restart(slot)

    async def _restart(self, slot: WorkerSlot) -> None:
        if not self.stopping and not self.draining:
            await supervised(f"start worker {slot.index}", lambda: self._spawn(slot), once=True)

    def _from_worker(self, slot: WorkerSlot) -> control.Handler:
        def handle(message: Message, fds: list[int]) -> None:
            for fd in fds:
                os.close(fd)
            if message.get("op") == "passive":
                backend = self.runtime.backends.get(message["backend"])
                if backend is not None:
                    backend.passive_result(message["address"], message["ok"], message["error"])

        return handle

    def _live(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.ready and s.channel is not None]

    async def _each(
        self, op: str, names: list[str] | None = None, limit: float = 60.0, **args: object
    ) -> list[Message]:
        """Send `op` to every live worker, with its sockets of the listeners `names`, and
        gather the answers of those that gave one (a worker that died is restarted anyway)."""
        calls = []
        for slot in self._live():
            assert slot.channel is not None
            keys, fds = self._sockets_of(slot, names or [])
            calls.append(slot.channel.call(op, fds, limit, sockets=keys, **args))
        replies = []
        for answer in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(answer, BaseException):
                log.warning("worker did not answer", op=op, error=str(answer))
            elif "error" in answer:
                log.error("worker failed", op=op, error=answer["error"])
            else:
                replies.append(answer)
        return replies

    # -- shared state
    def _runtime(self, config: ProxyConfig, generation: int, previous: Runtime | None) -> Runtime:
        """A runtime for the checks and the admin API: reads the shared counts, pushes health."""
        runtime = Runtime(config, self.node_name, generation, previous)
        keys = [(b.name, s.address) for b in runtime.backends.values() for s in b.servers]
        rows = self.rows.assign(keys)
        for backend in runtime.backends.values():
            backend.on_health = self._push_health
            for server in backend.servers:
                server.share(
                    self.table.cells, rows[backend.name, server.address], self.table.columns, -1
                )
        return runtime

    def _rows(self) -> dict[tuple[str, str], int]:
        return dict(self.rows.rows)

    def _push_health(self, backend: str, address: str, up: bool) -> None:
        for slot in self._live():
            assert slot.channel is not None
            slot.channel.send({"op": "health", "backend": backend, "address": address, "up": up})

    async def traffic(self) -> TrafficReport:
        slots = self._live()
        answers = await asyncio.gather(
            *(s.channel.call("traffic", limit=2.0) for s in slots if s.channel is not None),
            return_exceptions=True,
        )
        now = time.monotonic()
        for slot, answer in zip(slots, answers, strict=True):
            if isinstance(answer, dict) and "report" in answer:
                slot.last, slot.answered = answer["report"], now
        return merge([self.retired, *(s.last for s in self.slots)])

    async def _poll(self) -> None:
        """Keep each worker's report fresh (a crash loses at most POLL_EVERY of its counts)
        and kill a worker whose loop stopped answering, as systemd's watchdog does the
        master's: its replacement takes its sockets."""
        while True:
            await asyncio.sleep(POLL_EVERY)
            await self.traffic()
            now = time.monotonic()
            for slot in self._live():
                if now - max(slot.answered, slot.started) > HUNG_AFTER and slot.process:
                    log.error("worker not answering; killing it", worker=slot.index)
                    slot.process.kill()

    def address(self, listener: str) -> tuple[str, int]:
        """The bound (host, port) of a listener, by name (useful with port 0)."""
        return self.groups[listener].bound

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.ready and s.process is not None]

    # -- what the admin API reads and asks (admin.AdminSource)
    def listener_states(self) -> list[ListenerState]:
        serving = bool(self._live()) and not self.draining
        return [(name, g.bound, serving and bool(g.sockets)) for name, g in self.groups.items()]

    def start_drain(self) -> None:
        if not self.draining:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self, grace: float | None = None) -> bool:
        """Every worker stops accepting, sends 1001 to its WebSockets and finishes its HTTP."""
        self.draining = True
        for group in self.groups.values():
            group.close()  # the workers close theirs: new connections are refused
        timeout = (grace if grace is not None else self.runtime.timeouts.drain) + 10.0
        log.info("draining", workers=len(self._live()))
        replies = await self._each("drain", limit=timeout, grace=grace)
        log.info("drained", closed_at_timeout=sum(r["closed_at_timeout"] for r in replies))
        return all(r["clean"] for r in replies)

    async def undrain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        fresh = {
            name: Group.bind(g.config, len(self.slots), g.bound[1])
            for name, g in self.groups.items()
            if not g.sockets
        }
        self.groups.update(fresh)
        await self._each("undrain", names=list(fresh))
        self.draining = False
        await asyncio.gather(*(self._restart(s) for s in self.slots if not s.ready))
        log.info("undrained")

    async def address_drain(self, address: IPAddress) -> AddressDrain:
        replies = await self._each("drain_address", address=address)
        drains = [AddressDrain(**r["drain"]) for r in replies]
        return AddressDrain(
            sum(d.websockets for d in drains),
            sum(d.connections for d in drains),
            all(d.can_send for d in drains),
        )

    async def address_hold(self, address: IPAddress) -> AddressHold:
        holds = [
            AddressHold(**r["hold"]) for r in await self._each("hold_address", address=address)
        ]
        return AddressHold(
            sum(h.websockets for h in holds),
            sum(h.connections for h in holds),
            sum(h.unacknowledged for h in holds),
        )

    async def address_unhold(self, address: IPAddress) -> None:
        await self._each("unhold_address", address=address)

    async def reload(self, config: ProxyConfig) -> None:
        """Serve `config` in every worker; OSError (old config whole) if a new bind fails.

        Listeners are matched by name as in `ProxyServer.reload`: an unchanged one
        keeps its sockets, a new or moved one is bound here first.
        """
        fresh: dict[str, Group] = {}
        try:
            for lc in config.listeners:
                old = self.groups.get(lc.name)
                if old is not None and socket_kind(old.config) == socket_kind(lc):
                    continue
                port = old.bound[1] if old is not None and old.config.port == lc.port else None
                same_address = old is not None and (old.config.host, old.config.port) == (
                    lc.host,
                    lc.port,
                )
                fresh[lc.name] = Group.bind(lc, len(self.slots), port if same_address else None)
        except OSError:
            for group in fresh.values():
                group.close()
            raise
        old_runtime = self.runtime
        config = admin_as_running(old_runtime.config, config)
        self.runtime = self._runtime(config, old_runtime.generation + 1, old_runtime)
        self.runtime.start()
        kept = {
            lc.name: dataclasses.replace(self.groups[lc.name], config=lc)
            for lc in config.listeners
            if lc.name not in fresh
        }
        removed = [g for name, g in self.groups.items() if name not in kept]
        self.groups = {lc.name: fresh.get(lc.name) or kept[lc.name] for lc in config.listeners}
        self.config = config
        await self._each(
            "reload",
            names=list(fresh),
            config=self._worker_config(),
            rows=self._rows(),
            health=self._health(),
        )
        for group in removed:
            group.close()
        await old_runtime.stop()
        log.info("config reloaded", generation=self.runtime.generation, workers=len(self._live()))
