"""Each balancing algorithm's distribution through the real proxy."""

from __future__ import annotations

from collections import Counter

from tests.integration.proxy.support import config_from_text, proxy_config, raw_exchange, url


async def served_by(session, server, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    count: Counter[str] = Counter()
    for _ in range(n):
        async with session.get(url(server, "/who"), headers=headers or {}) as response:
            count[(await response.json())["server"]] += 1
    return count


async def test_round_robin_even(backends, proxy, session) -> None:
    bs = await backends(3)
    server = await proxy(proxy_config({"app": [b.address for b in bs]}, balance='"round_robin"'))
    assert await served_by(session, server, 30) == {"b0": 10, "b1": 10, "b2": 10}


async def test_round_robin_weights(backends, proxy, session) -> None:
    b0, b1 = await backends(2)
    server = await proxy(
        config_from_text(
            f'servers = [{{ address = "{b0.address}", weight = 3 }}, "{b1.address}"]\n'
            'balance = "round_robin"'
        )
    )
    assert await served_by(session, server, 40) == {"b0": 30, "b1": 10}


async def test_least_conn_spreads_sequential_requests(backends, proxy, session) -> None:
    bs = await backends(2)
    server = await proxy(proxy_config({"app": [b.address for b in bs]}))
    assert await served_by(session, server, 20) == {"b0": 10, "b1": 10}


async def test_source_hash_sticks_to_one_server(backends, proxy, session) -> None:
    bs = await backends(3)
    server = await proxy(proxy_config({"app": [b.address for b in bs]}, balance='"source_hash"'))
    assert len(await served_by(session, server, 15)) == 1


async def test_header_hash_sticky_per_user_and_spread(backends, proxy, session) -> None:
    bs = await backends(3)
    server = await proxy(
        proxy_config(
            {"app": [b.address for b in bs]},
            balance='"header_hash"',
            hash_key='"header:X-User"',
        )
    )
    homes = {}
    for user in range(30):
        count = await served_by(session, server, 3, {"X-User": f"user-{user}"})
        assert len(count) == 1
        homes[user] = next(iter(count))
    assert len(set(homes.values())) == 3


async def test_cookie_hash(backends, proxy, session) -> None:
    bs = await backends(3)
    server = await proxy(
        proxy_config(
            {"app": [b.address for b in bs]}, balance='"header_hash"', hash_key='"cookie:sid"'
        )
    )
    for sid in ("a", "b", "c", "d"):
        count = await served_by(session, server, 4, {"Cookie": f"theme=dark; sid={sid}"})
        assert len(count) == 1


async def test_max_conns_overflow_then_503(backends, proxy, session) -> None:
    """Servers at max_conns are skipped; when every one is full the answer is 503."""
    b0, b1 = await backends(2)
    server = await proxy(
        config_from_text(
            f'servers = [{{ address = "{b0.address}", max_conns = 1 }}, '
            f'{{ address = "{b1.address}", max_conns = 1 }}]'
        )
    )
    first = await session.ws_connect(url(server, "/ws"))
    second = await session.ws_connect(url(server, "/ws"))
    try:
        names = set()
        for ws in (first, second):
            await ws.send_str("whoami")
            names.add(await ws.receive_str())
        assert names == {"b0", "b1"}
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 503 ")
        assert raw.endswith(b"\r\n\r\nno server is available; retry later\n")
    finally:
        await first.close()
        await second.close()
