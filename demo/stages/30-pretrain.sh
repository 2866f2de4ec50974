#!/usr/bin/env bash
# Stage: pretrain the shakespeare-tiny LLaMA for about a minute on the data stage 20 encoded, interrupt it
# hard (SIGKILL after step 20), resume it exactly, then sample from the registered model.
set -euo pipefail
DATA="$DEMO_OUT/data/shakespeare"
if [ ! -f "$DATA/index.json" ]; then   # stage 20 not run: make the data here
  llmctl tokenize train --input "$SHARED/data/tinyshakespeare/input.txt" --type bpe --vocab-size 4096 \
    --name shakespeare-bpe --force
  llmctl tokenize encode --tokenizer shakespeare-bpe --input "$SHARED/data/tinyshakespeare/input.txt" \
    --output "$DATA" --name shakespeare-data --val-fraction 0.1 --force
fi
ARGS=(--profile shakespeare-tiny --data "$DATA" --name shakespeare-tiny-demo --force --max-steps 40 --batch-size 8
      --save-every 10 --eval-every 20 --set train.warmup_steps=10)
# LLMCTL_PRETRAIN_KILL_AT_STEP makes the process SIGKILL itself after that step (a test hook): a hard crash.
LLMCTL_PRETRAIN_KILL_AT_STEP=25 llmctl pretrain "${ARGS[@]}" || echo "(killed after step 25, as planned)"
llmctl pretrain "${ARGS[@]}" --resume        # continues from the step-20 checkpoint with identical losses
ls "$LLMCTL_HOME/runs/shakespeare-tiny-demo"
llmctl models show shakespeare-tiny-demo
llmctl generate --model shakespeare-tiny-demo --prompt "ROMEO:" --no-chat --max-new-tokens 40 --do-sample --seed 1
