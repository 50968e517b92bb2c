"""Running ansible-playbook from the project's virtualenv and reading its recap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.provision.machines import Lab

VENV_BIN = Path(sys.executable).parent
SITE = Path(__file__).resolve().parents[2] / "ansible" / "site.yml"
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
PLAYBOOK_TIMEOUT = 2400.0  # a loaded 2-core machine (load 40-70): a first run has taken over 25 min


@dataclass(frozen=True)
class Recap:
    ok: int
    changed: int
    unreachable: int
    failed: int


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    seconds: float
    recap: dict[str, Recap]
    log: Path

    def explain(self) -> str:
        """The end of the log, where Ansible says what failed."""
        return self.log.read_text(errors="replace")[-6000:]


def write_inventory(lab: Lab, path: Path, *, proxies: list[str], app: list[str]) -> Path:
    """An INI inventory of the lab in the layout of ansible/inventory/example.ini."""
    lines = ["[etcd]"]
    lines += [
        f"{n} ansible_host={lab.machine(n).address} node_address={lab.machine(n).address}"
        for n in proxies
    ]
    lines += ["", "[proxies]"]
    # The first node is preferred in active-standby mode, as an operator would set it.
    lines += [
        f"{n} haproxy_py_node_priority={150 if i == 0 else 100}" for i, n in enumerate(proxies)
    ]
    lines += ["", "[app]"]
    lines += [
        f"{n} ansible_host={lab.machine(n).address} node_address={lab.machine(n).address}"
        for n in app
    ]
    lines += [
        "",
        "[all:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={lab.key}",
        "ansible_ssh_common_args=-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter=/usr/bin/python3",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_playbook(
    inventory: Path, extra_vars: dict[str, object], work: Path, name: str, *options: str
) -> PlaybookRun:
    """`ansible-playbook -i inventory ansible/site.yml` for real, over ssh; log in work/NAME.log.

    `options` go to ansible-playbook as they are (e.g. `--diff`)."""
    vars_file = work / "extra-vars.json"
    vars_file.write_text(json.dumps(extra_vars, indent=1))
    log = work / f"{name}.log"
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        # The same output with a time stamp on every line, to see where the time goes.
        "ANSIBLE_LOG_PATH": str(work / f"{name}.timed.log"),
    }
    argv = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        "-e",
        f"@{vars_file}",
        *options,
        str(SITE),
    ]
    started = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    recap_text = text[text.rfind("PLAY RECAP") :] if "PLAY RECAP" in text else ""
    recap = {
        m.group(1): Recap(*(int(m.group(i)) for i in range(2, 6)))
        for m in RECAP.finditer(recap_text)
    }
    return PlaybookRun(returncode=done.returncode, seconds=seconds, recap=recap, log=log)
