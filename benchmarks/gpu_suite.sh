#!/usr/bin/env bash
# The GPU suite (issue 27): on one CUDA GPU, in <= 8 minutes, one JSON with `generate` batch 1 and 32 (hf, plain
# transformers with a static cache and CUDA graphs, vllm), `serve --backend vllm` under 1 and 64 clients, LoRA and
# QLoRA finetune tokens/s and MFU, `pretrain --profile gpt2-124m` MFU and GPTQ 4-bit time, with the GPU named.
# `--dry-run` runs every step's CPU part with tiny settings (vllm steps skipped where vllm cannot run).
# The steps and their settings are in benchmarks/_gpu_suite.py; arguments pass through to it.
#
# Examples:
#   bash benchmarks/gpu_suite.sh                                   # writes bench-out/gpu_suite.json
#   bash benchmarks/gpu_suite.sh --dry-run --model tiny --out /tmp/suite.json
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python="$(command -v python3)"; fi
fi
exec "$python" "$here/_gpu_suite.py" "$@"
