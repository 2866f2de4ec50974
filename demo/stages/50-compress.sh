#!/usr/bin/env bash
# Stage: compress the default model: INC RTN/GPTQ 4-bit, Wanda / SparseGPT 2:4 / head pruning, OpenVINO int8
# when installed; every output is registered with its parent and loads by name (generate answers from them).
set -euo pipefail
M=smollm2-135m-instruct
WIKI="$SHARED/data/wikitext-2-raw/wiki.test.raw"
SHORT=(--calib-data "$WIKI" --calib-samples 8 --calib-seqlen 256 --eval-tokens 2048 --force)
llmctl quantize --model $M --algo rtn --bits 4 --group-size 128 --name smol-rtn4 "${SHORT[@]}"
llmctl quantize --model $M --algo gptq --bits 4 --group-size 128 --name smol-gptq4 "${SHORT[@]}"
llmctl generate --model smol-gptq4 --prompt "What is the capital of France?" --max-new-tokens 24 --stats
# bad input is one clear line: re-quantizing a quantized entry
llmctl quantize --model smol-gptq4 --algo rtn --name nope 2>&1 | tail -1 || true
llmctl prune --model $M --method wanda --sparsity 0.5 --name smol-wanda50 "${SHORT[@]}"
llmctl prune --model $M --method sparsegpt --pattern 2:4 --name smol-sgpt24 "${SHORT[@]}"
llmctl prune --model $M --structure heads --ratio 0.33 --name smol-heads6 "${SHORT[@]}"
llmctl generate --model smol-heads6 --prompt "Name three primary colors." --max-new-tokens 24
# find_spec looks for the package without importing it (the import alone takes ~7 s)
if "$(dirname "$(command -v llmctl)")/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('optimum.intel') is None)"; then
  llmctl quantize --model $M --backend openvino --bits 8 --name smol-ov8 --eval-tokens 0 --force
  llmctl generate --model smol-ov8 --prompt "What is the capital of France?" --max-new-tokens 24 --stats
else
  echo "(OpenVINO not installed: pip install 'llmctl[openvino]' to add the OpenVINO int8/int4 step)"
fi
llmctl models show smol-gptq4
