"""The etcd role's defragmentation script, rendered as Ansible would and run against real
TLS members: it defragments its own member only, and skips its turn while one is down."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2

from haproxy_py import pki
from tests.support.etcd import EtcdCluster, EtcdTLS

SCRIPT = Path(__file__).resolve().parents[2] / "ansible/roles/etcd/templates/etcd-defrag.sh.j2"


def render(pki_dir: Path, port: int, out: Path) -> Path:
    text = jinja2.Template(SCRIPT.read_text()).render(
        ansible_managed="test",
        inventory_hostname="m0",
        etcd_pki_dir=str(pki_dir),
        etcd_client_port=port,
    )
    out.write_text(text)
    out.chmod(0o755)
    return out


def test_defragments_its_member_when_all_are_healthy_and_skips_otherwise(
    tmp_path: Path,
) -> None:
    pki.init_ca(tmp_path)
    member = pki.issue(tmp_path, "member", ["127.0.0.1"])
    client = pki.issue(tmp_path, "client", client=True)
    role_pki = tmp_path / "role-pki"  # the file names the role installs
    role_pki.mkdir()
    shutil.copy(tmp_path / "ca.crt", role_pki / "ca.crt")
    shutil.copy(member.cert, role_pki / "member.crt")
    shutil.copy(member.key, role_pki / "member.key")
    tls = EtcdTLS(tmp_path / "ca.crt", member.cert, member.key, client.cert, client.key)
    with EtcdCluster.start(size=3, tls=tls) as etcd:
        script = render(role_pki, etcd.members[0].client_port, tmp_path / "etcd-defrag")
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("Finished defragmenting etcd member") == 1
        assert f"127.0.0.1:{etcd.members[0].client_port}]" in done.stdout

        etcd.members[2].kill()
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0
        assert "not every member is healthy; skipping m0 this time" in done.stderr
        assert "Finished defragmenting" not in done.stdout
