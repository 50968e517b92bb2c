"""The monitoring files under monitoring/ and the metric names their queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "haproxy-py.rules.yml"
RULE_TESTS = REPO / "monitoring" / "prometheus" / "haproxy-py.rules.test.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "haproxy-py.json"
# Names in queries are ours or etcd's; `__name__=~"a_(b_|c_)?d"` regexes are expanded below.
_NAME = re.compile(r"\b(?:haproxy_py|etcd)_[a-zA-Z0-9_]+\b")
_NAME_REGEX = re.compile(r'__name__=~"([^"]+)"')


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def metric_names(query: str) -> tuple[set[str], list[re.Pattern[str]]]:
    """Plain metric names in `query`, and the `__name__` regexes it selects by."""
    regexes = [re.compile(raw) for raw in _NAME_REGEX.findall(query)]
    plain = {n for n in _NAME.findall(_NAME_REGEX.sub("", query))}
    return plain, regexes


def exposed(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition (`# TYPE` lines and samples)."""
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    names |= {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1].isalpha()}
    return names
