# The two commands a new user runs (as root, on Debian/Ubuntu): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv python3-dev gcc iproute2 etcd-server etcd-client nginx-light haproxy \
                keepalived chromium
STAMP := $(VENV)/.installed

.PHONY: deps venv test lint unit demo demo-down bench bench-failover clean

deps: /usr/bin/etcd venv

/usr/bin/etcd:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: deps lint
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

demo: deps
	$(VENV)/bin/python -m haproxy_py.demo

demo-down: venv
	-$(VENV)/bin/hactl lab down

clean:
	rm -rf $(VENV) build *.egg-info
