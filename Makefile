# RenoPay entry points. Each works on a fresh machine: it creates .venv when missing and installs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
# Where WeChat (and, in sandbox mode, the in-process stand-ins) reach this server; follows HOST/PORT
# unless set in the environment.
PUBLIC_BASE_URL ?= http://$(HOST):$(PORT)

.PHONY: run test lint worker clean-sandbox

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

## make run: migrate the SQLite database under instance/ and serve http://127.0.0.1:5000 (sandbox
## mode when no WeChat credentials are configured), with the scheduler in-process (flask run starts it).
run: $(VENV)/.installed-run
	$(BIN)/flask --app app db upgrade
	PUBLIC_BASE_URL=$(PUBLIC_BASE_URL) $(BIN)/flask --app app run --host $(HOST) --port $(PORT) --no-reload --with-threads

## make test: the whole suite (SQLite unless DATABASE_URL names PostgreSQL).
test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy payments erp_sync

## make worker: the scheduler alone (production runs exactly one of these).
worker: $(VENV)/.installed-run
	$(BIN)/flask --app app worker

clean-sandbox:
	rm -rf instance/sandbox instance/renopay.sqlite3*
