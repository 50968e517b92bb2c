"""The syscall counter's arithmetic: perf's CSV lines to counts, counts to a per-message table."""

from bench.syscalls import parse_perf_csv, table

PERF = """\
12000,,context-switches,3001234,100.00,,
24030,,syscalls:sys_enter_read,3001234,100.00,,
24010,,syscalls:sys_enter_write,3001234,100.00,,
0,,syscalls:sys_enter_epoll_ctl,3001234,100.00,,
<not counted>,,syscalls:sys_enter_ioctl,0,100.00,,
"""


def test_perf_csv_keeps_nonzero_syscalls_and_context_switches() -> None:
    assert parse_perf_csv(PERF) == {"(context switches)": 12000, "read": 24030, "write": 24010}


def test_table_is_per_message_and_totals_syscalls_only() -> None:
    results = {
        "a": ({"read": 24000, "write": 12000, "(context switches)": 6000}, 4000.0),
        "b": ({"read": 12000}, 2000.0),
    }
    text = table(results, 3.0)
    assert "| read | 2.000 | 2.000 |" in text
    assert "| write | 1.000 | 0.000 |" in text
    assert "| (context switches) | 0.500 | 0.000 |" in text
    assert "| syscalls | **3.00** | **2.00** |" in text
