"""`python -m haproxy_py.proxy` is `haproxy-py`."""

from haproxy_py.proxy.cli import main

main()
