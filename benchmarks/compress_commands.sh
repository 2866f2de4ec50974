#!/usr/bin/env bash
# Wall time of each whole compression command as a user runs it (issue 16's measurement): load, calibrate on
# 32×512 WikiText-2 tokens, compress, score 4,096 held-out tokens, save, register. One JSON line per command.
# The parent's perplexity is scored once (rtn-4-first) and remembered by the commands after it, as for a user.
# Usage: benchmarks/compress_commands.sh [MODEL]     (idle machine only; LLMCTL_HOME is a fresh temp folder)
#        ONLY='wanda' benchmarks/compress_commands.sh  (only the runs whose label matches this regex, after rtn-4-first)
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-smollm2-135m-instruct}
WIKI=../shared/data/wikitext-2-raw/wiki.test.raw
export LLMCTL_HOME=$(mktemp -d)
trap 'rm -rf "$LLMCTL_HOME"' EXIT
COMMON=(--model "$M" --calib-data "$WIKI" --calib-samples 32 --calib-seqlen 512 --eval-tokens 4096 --json)
.venv/bin/llmctl generate --model "$M" --prompt hi --max-new-tokens 1 >/dev/null 2>&1  # one-time conversion, not timed
run() {
  local label=$1; shift
  local t0 t1 out
  if [[ -n "${ONLY:-}" && "$label" != rtn-4-first && ! "$label" =~ $ONLY ]]; then return; fi
  t0=$(date +%s.%N)
  out=$(.venv/bin/llmctl "$@" 2>/dev/null)
  t1=$(date +%s.%N)
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); print(json.dumps({"run": sys.argv[1], "wall_s": round(float(sys.argv[2]), 1), "ppl_before": d.get("perplexity_before"), "ppl_after": d.get("perplexity_after"), "backend": d.get("backend")}))' \
    "$label" "$(echo "$t1 - $t0" | bc)" "$out"
}
# The first command scores the parent (~6 s); later ones reuse that perplexity (same weights and held-out text).
run rtn-4-first quantize "${COMMON[@]}" --algo rtn --bits 4 --name q-rtn-first
run rtn-4 quantize "${COMMON[@]}" --algo rtn --bits 4 --name q-rtn
run gptq-4 quantize "${COMMON[@]}" --algo gptq --bits 4 --name q-gptq
run awq-4 quantize "${COMMON[@]}" --algo awq --bits 4 --name q-awq
run sparsegpt-50 prune "${COMMON[@]}" --method sparsegpt --sparsity 0.5 --name p-sgpt50
run sparsegpt-2:4 prune "${COMMON[@]}" --method sparsegpt --pattern 2:4 --name p-sgpt24
run wanda-50 prune "${COMMON[@]}" --method wanda --sparsity 0.5 --name p-wanda50
run wanda-2:4 prune "${COMMON[@]}" --method wanda --pattern 2:4 --name p-wanda24
# true_sequential: each input's statistic after the block's earlier linears were pruned, ~one forward per block
run wanda-50-seq prune "${COMMON[@]}" --method wanda --sparsity 0.5 --true-sequential --name p-wanda50s
run wanda-2:4-seq prune "${COMMON[@]}" --method wanda --pattern 2:4 --true-sequential --name p-wanda24s
run sparsegpt-50-seq prune "${COMMON[@]}" --method sparsegpt --sparsity 0.5 --true-sequential --name p-sgpt50s
run sparsegpt-2:4-seq prune "${COMMON[@]}" --method sparsegpt --pattern 2:4 --true-sequential --name p-sgpt24s
