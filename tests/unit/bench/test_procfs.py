"""Parsing /proc: the figures CPU per message and memory per connection rest on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.procfs import children, parse_cpu_ticks, parse_machine, parse_ppid, parse_rss_kib

# A command name with a space and a parenthesis, as a process may choose.
STAT = "4242 (we ird) x) S 17 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 1 0 100 1000 200"


def test_stat_fields_after_the_last_parenthesis() -> None:
    """utime and stime are read past a command name containing ') '."""
    assert parse_cpu_ticks(STAT) == 123 + 45
    assert parse_ppid(STAT) == 17


def test_machine_busy_excludes_idle_and_iowait() -> None:
    text = (
        "cpu  100 5 50 1000 20 3 7 2 0 0\n"
        "cpu0 60 5 30 500 10 1 4 1 0 0\n"
        "cpu1 40 0 20 500 10 2 3 1 0 0\n"
        "intr 12345\n"
    )
    lines = parse_machine(text)
    assert set(lines) == {"cpu", "cpu0", "cpu1"}
    assert lines["cpu"].busy == 100 + 5 + 50 + 3 + 7 + 2
    assert lines["cpu"].total == lines["cpu"].busy + 1000 + 20
    assert lines["cpu1"].busy == 40 + 20 + 2 + 3 + 1


def test_rss_from_status() -> None:
    assert parse_rss_kib("Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t   11780 kB\n") == 11780


def test_children_finds_a_real_child() -> None:
    """The nginx worker is found this way, under its master."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys; subprocess.run(['sleep', '30'])"],
    )
    try:
        deadline = time.monotonic() + 30
        while not (found := children(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 1
        assert parse_ppid(Path(f"/proc/{found[0]}/stat").read_text()) == parent.pid
    finally:
        for pid in children(parent.pid):
            os.kill(pid, signal.SIGTERM)
        parent.kill()
        parent.wait()
