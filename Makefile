# Every target that runs code depends on the virtualenv, so `make run` and `make test`
# work on a fresh clone with nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vpiska

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data .pytest_cache
