"""The pure parts of the worker model: summed reports, shared counts, the `workers` key."""

from __future__ import annotations

import tomllib

import pytest

from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy.balancer import LeastConn, Server
from haproxy_py.proxy.config import ServerConfig, parse_proxy_section
from haproxy_py.proxy.report import TrafficReport, merge
from haproxy_py.proxy.shared import CountTable, RowMap


def test_merge_adds_every_counter_and_gauge_once() -> None:
    a = TrafficReport(
        responses=(0, 3, 0, 1, 0),
        websockets_total=2,
        per_ip_refused=(("rate", 1),),
        server_totals=(("app", "s1", 5),),
        listener_connections=(("web", 2),),
    )
    b = TrafficReport(
        responses=(1, 4, 0, 0, 2),
        websockets_total=1,
        per_ip_refused=(("rate", 2), ("open", 1)),
        server_totals=(("app", "s1", 1), ("app", "s2", 7)),
        listener_connections=(("web", 3),),
    )
    total = merge([a, b])
    assert total.responses == (1, 7, 0, 1, 2)
    assert total.websockets_total == 3
    assert total.per_ip_refused == (("open", 1), ("rate", 3))
    assert total.server_total("app", "s1") == 6 and total.server_total("app", "s2") == 7
    assert total.listener("web") == 5 and total.processes == 2


def test_a_dead_workers_counters_stay_and_its_gauges_go() -> None:
    live = TrafficReport(connections_total=10, websockets_open=4, listener_connections=(("w", 4),))
    retired = merge([TrafficReport(processes=0), live.without_gauges()])
    assert retired.connections_total == 10
    assert (retired.websockets_open, retired.listener("w"), retired.processes) == (0, 0, 0)


def test_least_conn_reads_every_workers_column() -> None:
    table = CountTable.create(rows=4, columns=2)
    rows = RowMap(4).assign([("app", "h:1"), ("app", "h:2")])
    mine = [Server(ServerConfig(host="h", port=p)) for p in (1, 2)]
    other = [Server(ServerConfig(host="h", port=p)) for p in (1, 2)]
    for column, servers in ((0, mine), (1, other)):
        for server in servers:
            server.share(table.cells, rows["app", server.address], 2, column)
    for _ in range(3):
        other[0].acquire()  # the other worker holds three on h:1
    assert [s.load() for s in mine] == [3, 0]
    assert LeastConn(mine).pick() is mine[1]
    mine[1].max_conns = 1
    mine[1].acquire()
    assert mine[1].full and LeastConn(mine).pick() is mine[0]
    table.zero_column(1)  # the other worker died
    assert [s.load() for s in mine] == [0, 1]


def test_rows_are_stable_and_bounded() -> None:
    rows = RowMap(2)
    assert rows.assign([("b", "x")]) == {("b", "x"): 0}
    assert rows.assign([("b", "y"), ("b", "x")]) == {("b", "y"): 1, ("b", "x"): 0}
    with pytest.raises(ValueError, match="more than 2 backend servers"):
        rows.assign([("b", "z")])


@pytest.mark.parametrize(
    ("text", "expected"), [("", None), ('workers = "auto"', None), ("workers = 3", 3)]
)
def test_workers_setting(text: str, expected: int | None) -> None:
    doc = Table(tomllib.loads(f"[proxy]\n{text}\n"), "n.toml", "")
    assert parse_proxy_section(doc).workers == expected


@pytest.mark.parametrize("value", ["0", '"many"', "true", "1000"])
def test_workers_setting_refused(value: str) -> None:
    doc = Table(tomllib.loads(f"[proxy]\nworkers = {value}\n"), "n.toml", "")
    with pytest.raises(ConfigError, match=r'n.toml: proxy.workers: expected "auto" or an integer'):
        parse_proxy_section(doc)
