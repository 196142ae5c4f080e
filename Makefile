# pyxenstored: set-up, tests and demo.
#
#   make test    install everything the tests need, then lint, type-check, test
#   make demo    run the demonstration (a daemon, the CLI; see README.md)
#   make bench   benchmark against C xenstored and oxenstored (~16 minutes;
#                BENCH_ARGS=--quick for ~1; see docs/benchmarks.md)
#   make fuzz    the protocol fuzzer, long version (FUZZ_EXAMPLES=10000, about
#                four minutes; see docs/security.md)
#   make fuzz-diff  random request streams against C xenstored, long version
#                (FUZZDIFF_SEEDS=100 x FUZZDIFF_OPS=300 operations, about a
#                minute when nothing differs; tests/difffuzz)
#   make soak    200 socket clients and 100 guests on one daemon (SOAK_SECONDS=60,
#                about two minutes; see docs/security.md)
#
# Needs Debian (root, for apt) and Python >= 3.11.  The real C xenstored and
# the Debian client tools come from ../shared/peers (see its README).

# Debian's own python3 where there is one: the interpreter a Debian dom0
# runs the daemon with.  A CPython built from source with the defaults
# (pyenv's: libpython shared, no PGO or LTO), found first on some PATHs,
# runs the same daemon with ~9% more instructions and 9-13% more CPU per
# request (docs/benchmarks.md, "Which Python").  PYTHON=... chooses another.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PEERS ?= ../shared/peers
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
FUZZ_EXAMPLES ?= 10000
FUZZDIFF_SEEDS ?= 100
FUZZDIFF_OPS ?= 300
SOAK_SECONDS ?= 60

.PHONY: test lint typecheck pytest deps peers demo bench fuzz fuzz-diff soak clean

test: lint typecheck pytest

# Debian's python3 makes virtualenvs only with python3-venv installed.
$(PY):
	$(PYTHON) -m venv $(VENV) || { \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
		$(PYTHON) -m venv --clear $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . --group test --group lint
	touch $@

deps: $(STAMP) peers

# Debian's xenstore-utils, libxenstore, and the C xenstored under its shim.
peers:
	@if [ -d "$(PEERS)" ]; then \
		sh $(PEERS)/get-xen-binaries.sh >/dev/null && \
		$(MAKE) -s -C $(PEERS) BUILD=/tmp/peers/build; \
	else \
		echo "$(PEERS) not found: the differential tests will fail" >&2; exit 1; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The integration tests run a second time with the daemons on uvloop (the
# optional event loop); the first run is on asyncio's own.
# The guest tests run once more with guests served through the Xen libraries'
# entry points (--hypervisor xen, answered by the peers' shim).
GUEST_TESTS := tests/integration/test_guest_kicks.py \
	tests/integration/test_guest_differential.py \
	tests/integration/test_hostile_rings.py tests/integration/test_migration.py \
	tests/integration/test_many_guests.py tests/integration/test_security_daemon.py \
	tests/integration/test_cli_ring.py tests/integration/test_internal_errors.py \
	tests/integration/test_live_update.py

pytest: deps
	$(PY) -bb -m pytest
	$(PY) -bb -m pytest -q --event-loop uvloop tests/integration
	$(PY) -bb -m pytest -q --backend xen $(GUEST_TESTS)

demo: deps
	$(PY) -m pyxenstored.demo

# matplotlib, for the plots only: the `bench` dependency group.
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -q --group bench
	touch $@

bench: deps $(BENCH_STAMP)
	PEERS=$(PEERS) $(PY) -m bench.run $(BENCH_ARGS)

# Not part of `make test`: the normal run plays the fuzzer's fixed CI set.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=dev FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(PY) -bb -m pytest tests/fuzz

# Not part of `make test` either: that plays 32 fixed seeds of 250 operations
# (tests/integration/test_random_differential.py).
fuzz-diff: deps
	FUZZDIFF_SEEDS=$(FUZZDIFF_SEEDS) FUZZDIFF_OPS=$(FUZZDIFF_OPS) \
		$(PY) -bb -m tests.difffuzz

soak: $(STAMP)
	PYXS_SOAK=1 SOAK_SECONDS=$(SOAK_SECONDS) \
		$(PY) -bb -m pytest -s tests/soak/soak_test.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
