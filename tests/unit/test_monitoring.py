"""The alert rules pass `promtool check rules` and their unit tests; the dashboard is sound.

That every metric they query exists in the daemons' real /metrics output is
checked with running daemons in tests/lab/monitoring.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.monitoring import (
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_queries,
    metric_names,
    rule_queries,
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: run `make deps` (Debian package prometheus)")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_the_issue_asks_for_is_there_and_tested() -> None:
    alerts = {
        "HaproxyPyVipUnowned",
        "HaproxyPyVipOnUnhealthyNode",
        "HaproxyPyControllerLeaderMissing",
        "HaproxyPyNodeDown",
        "HaproxyPyProxyUnhealthy",
        "HaproxyPyFailover",
        "EtcdDatabaseNearQuota",
        "EtcdAlarm",
        "HaproxyPyCertificateExpiresSoon",
    }
    assert alerts <= {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines()
                      if line.strip().startswith("- alert:")}  # fmt: skip
    tested = RULE_TESTS.read_text()
    assert all(f"alertname: {alert}" in tested for alert in alerts)


def test_dashboard_is_valid_json_with_unique_panels_and_real_queries() -> None:
    doc = dashboard()
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert doc["uid"] and doc["title"]
    queries = dashboard_queries()
    assert len(queries) >= 15
    for query in queries:
        plain, regexes = metric_names(query)
        assert plain or regexes, query
    names = set().union(*(metric_names(q)[0] for q in queries))
    # the three daemons and etcd each have a panel
    assert {n.split("_")[2] for n in names if n.startswith("haproxy_py_")} >= {
        "agent",
        "controller",
    }
    assert "haproxy_py_client_connections" in names
    assert any(n.startswith("etcd_") for n in names)
    assert all(metric_names(q) for q in rule_queries())
