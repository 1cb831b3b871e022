# `make run` and `make test` set everything up on a fresh machine: a
# virtualenv in .venv with the pinned requirements, then the command.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000

.PHONY: run test initdb clean

$(BIN)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python server.py --port $(PORT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

initdb: $(BIN)/.installed
	$(BIN)/python server.py initdb

clean:
	rm -rf $(VENV) var .pytest_cache
