# pyxenstored: set-up, tests and demo.
#
#   make test    install everything the tests need, then lint, type-check, test
#   make demo    run the demonstration (a daemon, the CLI; see README.md)
#
# Needs Debian (root, for apt) and Python >= 3.11.  The real C xenstored and
# the Debian client tools come from ../shared/peers (see its README).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PEERS ?= ../shared/peers
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest deps peers demo bench clean

test: lint typecheck pytest

$(PY):
	$(PYTHON) -m venv $(VENV)

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

pytest: deps
	$(PY) -bb -m pytest

demo: deps
	$(PY) -m pyxenstored.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
