# One command each: `make run` starts tokenfarm on SQLite with a demo; `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: install run test lint clean

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
	$(BIN)/ruff check app tests migrations
	$(BIN)/mypy app

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
