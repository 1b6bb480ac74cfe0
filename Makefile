# Strategy@Home: `make demo` and `make test` set everything up on a machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WHEEL_STAMP := var/dist/.built

.PHONY: help install browser test lint bench bench-quick bench-scheduler bench-load bench-daemons bench-faults bench-cheaters demo engine-demo wheel clean

help:
	@echo "make demo         set up and run the demo"
	@echo "make test         set up and run the whole test suite"
	@echo "make bench        engine benchmark against vectorbt, backtesting.py and a numba loop"
	@echo "make bench-quick  the same, reduced (under a minute)"
	@echo "make bench-scheduler  tasks dispatched and reported per second (PostgreSQL, gunicorn)"
	@echo "make bench-load   1,000 simulated hosts against gunicorn + PostgreSQL + the daemons"
	@echo "make bench-daemons  the daemons alone: reported work units validated/s (PostgreSQL)"
	@echo "make bench-faults portal, cluster, PostgreSQL and workers restarted while mining"
	@echo "make bench-cheaters  forged results against the validator: accepted, credit, redundancy"
	@echo "make engine-demo  a local island search, no portal"
	@echo "make wheel        build the worker client wheel the portal serves (var/dist/)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[portal,test,peers,bench]"
	touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's chromium (never a downloaded browser); as root, install it.
browser:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& (apt-get install -y chromium || (apt-get update && apt-get install -y chromium))) || true

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) bench/engine.py

bench-quick: $(STAMP)
	$(PY) bench/engine.py --quick

bench-scheduler: $(STAMP)
	$(PY) bench/scheduler.py

bench-load: $(STAMP)
	$(PY) bench/load.py

bench-daemons: $(STAMP)
	$(PY) bench/daemons.py

# Restarts the local PostgreSQL: not while something else uses it.
bench-faults: $(STAMP)
	$(PY) bench/faults.py

bench-cheaters: $(STAMP)
	$(PY) bench/cheaters.py

demo: $(STAMP) $(WHEEL_STAMP)
	$(PY) scripts/demo.py

engine-demo: $(STAMP)
	$(PY) -m worker_client.engine.demo

# The volunteer's package, exactly as the portal's download page serves it.
$(WHEEL_STAMP): $(STAMP) $(shell find worker_client -name '*.py')
	rm -f var/dist/strategy_worker-*.whl
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir var/dist .
	touch $(WHEEL_STAMP)

wheel: $(WHEEL_STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
