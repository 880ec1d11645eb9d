# Every target that runs code depends on the virtualenv, so `make run` and `make test`
# work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint clean bench bench-quick

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vpiska

# A cluster on this machine (docs/cluster.md): deploy/local-cluster.sh installs
# Debian's redis-server if missing, starts it on 127.0.0.1:$(REDIS_PORT) unless a Redis answers
# there, and runs WORKERS nodes (one per core) on :5000 sharing it; Ctrl-C stops the nodes,
# then the Redis it started.
WORKERS ?= $(shell nproc)
REDIS_PORT ?= 6379

.PHONY: cluster
cluster: $(STAMP)
	WORKERS=$(WORKERS) REDIS_PORT=$(REDIS_PORT) PY=$(PY) deploy/local-cluster.sh

test: $(STAMP)
	$(PY) -m pytest

# ruff (rules in pyproject.toml's [tool.ruff]) and mypy --strict ([tool.mypy]: vpiska and tests).
lint: $(STAMP)
	$(PY) -m ruff check vpiska tests
	$(PY) -m mypy

# `make test` STRESS_RUNS times in a row while a busy loop holds CPU 1 of the machine's two, as
# a loaded CI machine would: stops at the first failing run, and prints each run's result and
# wall time. The busy loop starts first and is killed on the way out, pass, fail or Ctrl-C.
STRESS_RUNS ?= 5

.PHONY: test-stress
test-stress: $(STAMP)
	@taskset -c 1 python3 -c 'while True: pass' & spinner=$$!; \
	trap 'kill $$spinner 2>/dev/null; wait $$spinner 2>/dev/null' EXIT; \
	trap 'exit 130' HUP INT PIPE TERM; \
	echo "test-stress: core 1 kept busy by pid $$spinner"; \
	summary=""; \
	for run in $$(seq 1 $(STRESS_RUNS)); do \
		start=$$(date +%s.%N); \
		if $(MAKE) --no-print-directory test; then result=pass; else result=FAIL; fi; \
		took=$$(awk "BEGIN { printf \"%.1f\", $$(date +%s.%N) - $$start }"); \
		line="test-stress run $$run/$(STRESS_RUNS): $$result in $$took s"; \
		echo "$$line"; summary="$$summary$$line;"; \
		if [ $$result = FAIL ]; then break; fi; \
	done; \
	echo "test-stress summary (core 1 busy):"; printf '%s' "$$summary" | tr ';' '\n'; \
	[ $$result = pass ]

clean:
	rm -rf $(VENV) data .pytest_cache bench/.venv bench/node_modules bench/.cache

# Benchmarks (bench/README.md): a venv of their own with vpiska and the HTTP references, Node's
# `ws` for the Node peer, and Debian's wrk, gcc (the C load generator), golang-go (the Go
# reference) and redis-server (the cluster section), installed by bench/install-tools.sh.
BENCH_VENV := bench/.venv
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
NODE_STAMP := bench/node_modules/.installed
ENSURE_TOOLS := bench/install-tools.sh

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

$(NODE_STAMP): bench/package.json
	cd bench && npm install --no-audit --no-fund --no-package-lock --loglevel=error
	touch $(NODE_STAMP)

bench: $(BENCH_STAMP) $(NODE_STAMP)
	@$(ENSURE_TOOLS)
	$(BENCH_PY) -m bench.run
	$(BENCH_PY) -m bench.persist

bench-quick: $(BENCH_STAMP) $(NODE_STAMP)
	@$(ENSURE_TOOLS)
	$(BENCH_PY) -m bench.run --quick
	$(BENCH_PY) -m bench.persist --quick

# Soak (not part of `make test`): 10,000 members in 100 rooms of one vpiska, light chat, RSS and
# open sockets sampled every minute; writes bench/soak.json and its section of BENCHMARKS.md.
# SOAK_MINUTES=2 make soak for a try.
SOAK_MINUTES ?= 10

.PHONY: soak
soak: $(BENCH_STAMP)
	@$(ENSURE_TOOLS)
	SOAK_MINUTES=$(SOAK_MINUTES) $(BENCH_PY) -m bench.soak

# A longer schemathesis run than `make test`'s (tests/test_fuzz.py; FUZZ_SEED=<n> replays a run),
# then a longer run of the raw-socket fuzzer (tests/test_fuzz_raw.py).
FUZZ_EXAMPLES ?= 300
FUZZ_RAW_SECONDS ?= 120

.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -s -p no:cacheprovider tests/test_fuzz.py
	FUZZ_RAW_SECONDS=$(FUZZ_RAW_SECONDS) $(PY) -m pytest -s -p no:cacheprovider tests/test_fuzz_raw.py

# Docker (docs/operations.md "Docker"): `infrastructure` starts MongoDB alone, for `make run` with
# DB_CONNECTION=mongodb://127.0.0.1:27017; `up` runs vpiska and MongoDB together.
COMPOSE ?= docker compose

.PHONY: infrastructure build up down
infrastructure:
	$(COMPOSE) up -d mongodb

build:
	$(COMPOSE) build vpiska

up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down
