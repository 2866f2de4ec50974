#!/usr/bin/env bash
# Stage: evaluate offline with lm-eval tasks read from the shared data dir (short limits), perplexity on
# WikiText-2, a CI gate (exit 3 when below), and a comparison table + PNG of the default model and the
# models earlier stages derived from it (finetuned/merged/quantized/pruned, when present).
set -euo pipefail
export LLMCTL_DATA_DIR="$SHARED/data"
M=smollm2-135m-instruct
llmctl eval --model $M --tasks hellaswag,arc_challenge --limit 10 --batch-size 16 \
  --output "$DEMO_OUT/eval-$M.json" --force
llmctl eval --model $M --tasks perplexity --data "$SHARED/data/wikitext-2-raw/wiki.test.raw" \
  --seqlen 512 --stride 256 --max-tokens 4096
# the CI use: a gate that passes, then one that fails on purpose (exit code 3)
llmctl eval --model $M --tasks perplexity --seqlen 512 --stride 256 --max-tokens 2048 \
  --fail-under perplexity.token_perplexity=200          # lower is better: fails only when above
set +e
llmctl eval --model $M --tasks arc_challenge --limit 5 --fail-under arc_challenge.acc_norm=0.99
code=$?
set -e
echo "(gate arc_challenge.acc_norm=0.99 failed as planned: exit code $code)"
[ "$code" -eq 3 ]
llmctl models show $M | tail -12
# compare the default model with up to two models derived from it by earlier stages
OTHERS=$(llmctl models list --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
kids = [r["name"] for r in rows if r["format"] in ("hf", "inc-woq", "inc-int8") and r["name"] != "'$M'"
        and any(p == "'$M'" or p.startswith("smol") for p in r["parents"])]
print(" ".join(kids[-2:]))')
llmctl eval compare $M $OTHERS --tasks hellaswag,perplexity --limit 10 --max-tokens 2048 --seqlen 512 \
  --stride 256 --plot "$DEMO_OUT/eval-compare.png" --force
echo "chart: $DEMO_OUT/eval-compare.png"
