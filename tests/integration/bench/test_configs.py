"""The generated proxy configurations are accepted by the real programs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import configs


def test_nginx_accepts_both_buffer_variants(tmp_path: Path) -> None:
    for buffer_64k in (False, True):
        conf = tmp_path / f"nginx-{buffer_64k}.conf"
        conf.write_text(
            configs.nginx_conf(
                listen=18080,
                backend="127.0.0.1:19000",
                workdir=tmp_path,
                buffer_64k=buffer_64k,
                fd_limit=20000,
            )
        )
        done = subprocess.run(
            ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def test_haproxy_accepts_its_config(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(configs.haproxy_cfg(listen=18080, backend="127.0.0.1:19000", fd_limit=20000))
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_py_accepts_its_config(tmp_path: Path) -> None:
    conf = tmp_path / "proxy.toml"
    conf.write_text(
        configs.haproxy_py_toml(
            listen=18080, admin=18081, backend="127.0.0.1:19000", fd_limit=20000
        )
    )
    program = Path(sys.executable).with_name("haproxy-py")
    done = subprocess.run(
        [str(program), "check-config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
