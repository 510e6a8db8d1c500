# Two commands set everything up on a fresh machine:
#   make serve   install into .venv and run the server on its embedded default
#   make test    install into .venv (with test extras) and run the whole test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test install install-test bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'

serve: install
	$(BIN)/mailwright serve

test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
