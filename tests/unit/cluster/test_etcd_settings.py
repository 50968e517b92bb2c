"""Wherever the project runs etcd, history is compacted and the backend quota is explicit.

etcd 3.4 keeps every revision until compacted; unbounded, the database reaches
the quota and etcd refuses every write (NOSPACE). The lab, the tests' members
and the Ansible role each start etcd their own way, so each is checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import yaml

from haproxy_py.lab import layout as lay
from tests.support.etcd import EtcdMember

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "ansible" / "roles" / "etcd"


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def _assert_bounded(flags: dict[str, str]) -> None:
    assert flags["auto-compaction-mode"] == "periodic"
    assert re.fullmatch(r"\d+[mh]", flags["auto-compaction-retention"])
    assert 0 < int(flags["quota-backend-bytes"]) <= 8 * 1024**3  # etcd's advice: at most 8 GiB


def test_lab_members_compact_and_have_a_quota(tmp_path: Path) -> None:
    plan = lay.plan("t", "198.18.0.0/24", 2, "active-standby", None)
    argv = lay.etcd_command(plan, plan.etcd[0], tmp_path, tmp_path / "data")
    _assert_bounded(_flags(argv))


def test_test_members_compact_and_have_a_quota(tmp_path: Path) -> None:
    member = EtcdMember("m0", 1, 2, tmp_path / "m0", "m0=http://127.0.0.1:2")
    _assert_bounded(_flags(member._command()))


def test_ansible_members_compact_have_a_quota_and_defragment_one_at_a_time() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    template = (ROLE / "templates" / "etcd.default.j2").read_text()
    rendered = {
        "auto-compaction-mode": defaults["etcd_auto_compaction_mode"],
        "auto-compaction-retention": defaults["etcd_auto_compaction_retention"],
        "quota-backend-bytes": str(defaults["etcd_quota_backend_bytes"]),
    }
    _assert_bounded(rendered)
    for variable in ("AUTO_COMPACTION_MODE", "AUTO_COMPACTION_RETENTION", "QUOTA_BACKEND_BYTES"):
        assert f'ETCD_{variable}="{{{{ etcd_{variable.lower()} }}}}"' in template
    timer = jinja2.Template((ROLE / "templates" / "etcd-defrag.timer.j2").read_text())
    hosts = ["e1", "e2", "e3", "e4", "e5"]
    slots = [
        re.findall(
            r"^OnCalendar=(.*)$",
            timer.render(
                **defaults, groups={"etcd": hosts}, inventory_hostname=host, ansible_managed="test"
            ),
            re.M,
        )
        for host in hosts
    ]
    # Each member has its own slot: never two defragmenting at once.
    assert [s[0] for s in slots] == [
        f"Sun *-*-* {t}:00" for t in ("03:00", "03:15", "03:30", "03:45", "04:00")
    ]
    script = (ROLE / "templates" / "etcd-defrag.sh.j2").read_text()
    assert "endpoint health --cluster" in script  # skips its turn unless all are healthy
    assert "--cluster defrag" not in script and "defrag --cluster" not in script
