# One command each: `make run` starts tokenfarm on SQLite with a demo; `make test` runs every test;
# `make docs` builds docs/ into site/ (strict: a broken link fails it).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install run test lint docs clean

$(BIN)/tokenfarm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/tokenfarm

run: install
	$(BIN)/tokenfarm demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/mypy app

docs: install
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) data site .pytest_cache .mypy_cache .ruff_cache
