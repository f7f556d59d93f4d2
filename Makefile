# Entry points that work on a fresh machine: they build .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test unit lint check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)  ## The main job on bundled samples: real worker, embedded DB and broker.
	$(BIN)/cxr-orient demo

test: $(STAMP)  ## Lint, format check, types, unit and integration tests (needs Redis and PostgreSQL on 127.0.0.1).
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 4 --dist loadgroup --no-loadscope-reorder

unit: $(STAMP)  ## The unit tier: no server (tests needing PostgreSQL/Redis/workers deselected).
	$(BIN)/pytest -n 2 -m "not integration and not pg" -q

bench: $(STAMP)  ## The benchmark from this checkout (not a cxr-orient verb, not in the wheel).
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) cxr-orient-data .pytest_cache .mypy_cache .ruff_cache
