"""Builds haproxy-py with its hot data-plane modules compiled to C by mypyc.

The metadata is in setup.cfg; this file only adds the compiled modules
(`COMPILED`): in a wheel, or beside their sources for an editable install
(`pip install -e .`, `make venv`). `HAPROXY_PY_PURE=1` at build time builds
them as plain Python instead (to compare the two, or without a C compiler),
and removes the extension modules an earlier build left in the tree.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from setuptools import setup

# The modules on a request's path (all of it: no interpreted project code runs in an
# exchange, bench/hotpath.py) and on a WebSocket frame's (the relay and its frame
# tracker): their Python work is the proxy's own cost per request or frame
# (bench/README.md). mypyc checks their type hints at run time, and their classes are
# native (fixed attributes, no subclasses or patching from interpreted code).
COMPILED = [
    "haproxy_py/proxy/headers.py",
    "haproxy_py/proxy/requestcheck.py",
    "haproxy_py/proxy/upstream.py",
    "haproxy_py/proxy/clientstate.py",
    "haproxy_py/proxy/exchange.py",
    "haproxy_py/proxy/requestparse.py",
    "haproxy_py/proxy/frontend.py",
    "haproxy_py/proxy/balancer.py",
    "haproxy_py/proxy/accesslog.py",
    "haproxy_py/proxy/wsframes.py",
    "haproxy_py/proxy/relay.py",
    "haproxy_py/proxy/runtime.py",
    "haproxy_py/proxy/routing.py",
]

GROUP = "haproxy_py_proxy"  # the shared library of the compiled modules: GROUP__mypyc

if os.environ.get("HAPROXY_PY_PURE"):
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for module in [source.removesuffix(".py") for source in COMPILED] + [f"{GROUP}__mypyc"]:
        Path(module + suffix).unlink(missing_ok=True)
    setup()
else:
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3", group_name=GROUP))
