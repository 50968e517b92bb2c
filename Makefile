# The two commands a new user runs (as root, on Debian/Ubuntu): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv python3-dev gcc iproute2 etcd-server etcd-client nginx-light haproxy \
                keepalived chromium \
                systemd-container debootstrap openssh-client dpkg-dev ruby vagrant \
                prometheus curl
STAMP := $(VENV)/.installed
# The modules setup.py compiles with mypyc (into the tree, beside their sources): an edit
# to one rebuilds the venv, so `make test` and `make bench` never run an older build.
COMPILED := $(shell sed -n 's/^ *"\(haproxy_py\/proxy\/[a-z_]*\.py\)",$$/\1/p' setup.py)
APT_PACKAGES += libnftables1 nftables  # the agent's nftables fence (nft for operators)
APT_PACKAGES += bird2  # BGP mode: the BGP speaker on each node and the lab's router

.PHONY: test-workers deps apt venv test lint unit demo demo-down bench bench-failover bench-anchors chaos clean

deps: apt venv

# Installs only what is missing, so a machine that has some of the packages still gets the rest.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends -o DPkg::Lock::Timeout=600 $$missing; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml setup.py $(COMPILED)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The data-plane tiers again against a master with two worker processes (every test but
# those that look inside the one-process proxy); run once, on asyncio, beside the full run.
WORKER_TIERS := tests/integration/proxy/test_http.py tests/integration/proxy/test_websocket.py \
  tests/integration/proxy/test_balancing.py tests/integration/proxy/test_errors.py \
  tests/integration/proxy/test_health.py tests/integration/proxy/test_admin.py \
  tests/integration/proxy/test_fuzz.py tests/integration/proxy/test_limits.py \
  tests/integration/proxy/test_drain.py tests/integration/proxy/test_proxy_protocol.py \
  tests/integration/proxy/test_admin_access.py tests/integration/proxy/test_admin_auth.py \
  tests/integration/proxy/test_reload.py tests/integration/proxy/test_tls.py \
  tests/integration/proxy/test_drain_process.py tests/integration/proxy/test_drain_moved.py \
  tests/integration/proxy/test_hold_http.py tests/integration/adversarial
WORKERS_PASS := HAPROXY_PY_TEST_WORKERS=2 $(VENV)/bin/pytest -q -ra -p no:cacheprovider \
  -m "not single_process" $(WORKER_TIERS)

# The lab tier (namespaces, one lab at a time) runs in a pytest process of its own beside the
# rest, the two-worker pass and the provisioning tests (systemd hosts on a /24 of their own); its
# report is printed after theirs.
test: deps lint
	@lab=$$(mktemp); \
	$(VENV)/bin/pytest -q -ra --durations=20 -p no:cacheprovider -m lab --ignore=tests/provision \
	  $(PYTEST_ARGS) >$$lab 2>&1 & \
	pid=$$!; $(VENV)/bin/pytest -q -ra --durations=10 -m "not lab" $(PYTEST_ARGS); rest=$$?; \
	$(WORKERS_PASS); workers=$$?; \
	$(VENV)/bin/pytest -q -ra -p no:cacheprovider -m lab tests/provision; provision=$$?; \
	wait $$pid; labrc=$$?; echo "== the lab tier"; cat $$lab; rm -f $$lab; \
	[ $$rest -eq 0 -o $$rest -eq 5 ] && [ $$workers -eq 0 ] && [ $$provision -eq 0 ] \
	  && [ $$labrc -eq 0 -o $$labrc -eq 5 ]

test-workers: deps
	$(WORKERS_PASS)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# PROFILE=fast: lease TTL 1 s (docs/lab.md); `hactl lab up --profile` does the same.
PROFILE ?= default
demo: deps
	$(VENV)/bin/python -m haproxy_py.lab.tour --profile $(PROFILE)

demo-down: venv
	-$(VENV)/bin/hactl lab down

# The proxy benchmark (bench/README.md): nginx, haproxy, and a Go load generator and echo
# backend built from Debian's Go and gorilla/websocket packages. BENCH_ARGS passes options.
BENCH_APT := nginx-light haproxy golang-go golang-github-gorilla-websocket-dev
BENCH_APT += exabgp frr  # bench-anchors: the BGP anchors (their own services are kept stopped)
bench: venv
	command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v go >/dev/null \
	  && test -d /usr/share/gocode/src/github.com/gorilla/websocket \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	       -o DPkg::Lock::Timeout=600 $(BENCH_APT); }
	cd bench/go && for tool in echo loadgen; do \
	  GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= GOCACHE=$(CURDIR)/bench/bin/.go-cache \
	    go build -o ../bin/$$tool ./$$tool || exit 1; done
	$(PY) -m bench $(BENCH_ARGS)

# The failover benchmark (bench/failover, root): haproxy-py's cluster, in both timing profiles,
# against keepalived in the lab, every fault REPEATS times per stack, WS_REPEATS more with 1,000
# WebSocket clients; writes bench/results/failover.{json,md}. FAILOVER_ARGS passes more options
# (python -m bench.failover -h; e.g. --stacks, --scenarios, --keep to re-run only some).
REPEATS ?= 20
WS_REPEATS ?= 2
bench-failover: deps
	command -v keepalived >/dev/null && command -v curl >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	       -o DPkg::Lock::Timeout=600 keepalived curl; }
	$(PY) -m bench.failover --repeats $(REPEATS) --ws-repeats $(WS_REPEATS) $(FAILOVER_ARGS)
	$(PY) -m bench.failover.handover
	$(PY) -m bench.failover.etcdfaults

# The BGP anchors under the BGP lab's faults (bench/README.md, root): ExaBGP with its healthcheck
# and MetalLB's defaults on FRR, each in a lab of its own, both at once; writes
# bench/results/bgp-anchors.{json,md} beside bench/results/bgp.json. ANCHORS_ARGS passes options.
bench-anchors: deps
	command -v exabgp >/dev/null && command -v vtysh >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	       -o DPkg::Lock::Timeout=600 $(BENCH_APT); }
	$(PY) -m bench.bgpanchors --anchor exabgp $(ANCHORS_ARGS) & exa=$$!; \
	  $(PY) -m bench.bgpanchors --anchor metallb $(ANCHORS_ARGS); frr=$$?; wait $$exa && exit $$frr

# The long chaos run (docs/lab.md, root): CHAOS_FAULTS seeded random faults under load per
# mode, each in a lab of its own; writes bench/results/chaos-<mode>.{json,txt}, fails on a violation.
CHAOS_FAULTS ?= 160
CHAOS_SEED ?= 20261203
CHAOS_PREFIX ?= hck-
chaos: deps
	for mode in active-standby active-active; do \
	  $(VENV)/bin/hactl lab --run-dir /tmp/haproxy-py-chaos-$$mode chaos --mode $$mode --prefix $(CHAOS_PREFIX) \
	    --faults $(CHAOS_FAULTS) --seed $(CHAOS_SEED) --report bench/results/chaos-$$mode.json \
	    > bench/results/chaos-$$mode.txt || { cat bench/results/chaos-$$mode.txt; exit 1; }; \
	done

clean:
	rm -rf $(VENV) build *.egg-info *.so haproxy_py/proxy/*.so

# WebSocket conformance: every Autobahn case (kosoku), direct to an echo backend and through
# the proxy; fails if the proxy fails a case the backend passes. CONFORMANCE_ARGS passes options.
.PHONY: conformance
conformance: venv
	$(PY) -m tests.conformance.run --json build/conformance.json $(CONFORMANCE_ARGS)
