# Two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format bench soak fuzz browser-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m tools.devserver

# Debian's Chromium for the browser tests (never a downloaded browser), and shellcheck for the
# node's start-up script (tests/agent/test_onstart_script.py).
browser-deps:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be reported as errors")
	@command -v shellcheck >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -qq shellcheck >/dev/null) || echo "shellcheck not installed: the start-up script check will be skipped"

# Four workers on two cores: the end-to-end tests mostly wait on real processes (boots, deadlines,
# outages), so two more workers overlap those waits instead of idling the CPU. They are collected
# first (tests/conftest.py) and handed out one at a time, so no worker queues two of them.
test: $(STAMP) browser-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 4 --maxschedchunk 1 -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not e2e and not browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# One table: inventory API, provisioning, reconcile, deadline lag, live updates (BENCH_QUICK=1: small).
bench: $(STAMP)
	$(BIN)/python -m tools.bench

clean:
	rm -rf $(VENV) db.sqlite3* .sandbox .run

# 200 rentals with every fault injected, processes killed and restarted along the way.
soak: $(STAMP)
	$(BIN)/python -m tools.chaos --rentals 200 --reservation-minutes 3 --timeout 900

# Nightly-style schema fuzzing: new random inputs every run (the suite's run is derandomized).
fuzz: $(STAMP)
	SCHEMA_FUZZ_RANDOM=1 SCHEMA_FUZZ_EXAMPLES=$${SCHEMA_FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest -n 0 -q \
		tests/test_schema_fuzz.py -k "answers_as_documented or absurd_nesting"
