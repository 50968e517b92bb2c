"""Aggregating py-spy's collapsed stacks into where the proxy's CPU goes."""

from __future__ import annotations

from bench.profile import render, summarise

ENTRY = ";".join(
    [
        "0x7f00 (libc.so.6)",
        "<module> (haproxy-py:6)",
        "run (haproxy_py/proxy/cli.py:127)",
        "uv_run (core.c:475)",
    ]
)
RAW = "\n".join(
    [
        f"{ENTRY};epoll_pwait (libc.so.6) 50",
        f"{ENTRY};data_received (haproxy_py/proxy/relay.py:40);write (libc.so.6) 30",
        f"{ENTRY};data_received (haproxy_py/proxy/relay.py:41);write (libc.so.6) 6",
        f"{ENTRY};data_received (haproxy_py/proxy/relay.py:38) 4",
        f"{ENTRY};uv__read (stream.c:1143);read (libc.so.6) 8",
        f"{ENTRY};parse (parser.c:10);llhttp__internal__run (llhttp.c:9673) 2",
        # The access log's writer thread, asleep in its queue between batches.
        "_write_loop (haproxy_py/proxy/accesslog.py:200);_queue_SimpleQueue_get "
        "(_queuemodule.c.h:177);PyThread_acquire_lock_timed (libpython3.11.so.1.0);"
        "0x7f76880aed90 (libc.so.6);0x7f76880a3f16 (libc.so.6) 20",
        "not a sample line",
    ]
)


def test_idle_samples_are_set_apart() -> None:
    p = summarise(RAW)
    assert (p.samples, p.idle) == (120, 70)


def test_a_thread_asleep_on_a_lock_is_idle_not_libc_time() -> None:
    p = summarise(RAW)
    assert "(libc.so.6)" not in dict(p.self_time)
    assert all("_write_loop" not in name for name, _ in p.project)


def test_self_time_merges_lines_of_one_function() -> None:
    p = summarise(RAW)
    assert p.self_time[0] == ("write (libc.so.6)", 36)
    assert ("data_received (haproxy_py/proxy/relay.py)", 4) in p.self_time


def test_project_functions_count_inclusive_time_but_not_the_entry_point() -> None:
    p = summarise(RAW)
    assert p.project == [("data_received (haproxy_py/proxy/relay.py)", 40)]


def test_components_split_the_busy_samples() -> None:
    p = summarise(RAW)
    assert dict(p.components) == {
        "system calls and libc": 44,
        "Python code (haproxy_py)": 4,
        "httptools / llhttp": 2,
    }


def test_render_shows_shares_of_busy_samples() -> None:
    md = render({"ws-small": summarise(RAW)}, {"ws-small": "WebSocket 64 B"})
    assert "## WebSocket 64 B" in md
    assert "| `write (libc.so.6)` | 72.0 % |" in md
